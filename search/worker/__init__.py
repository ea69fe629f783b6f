"""A worker process: its start-up (``build``: ``build_worker``), the loop over trials (``lifecycle``), one trial's
attempt (``trial_run``) and resume (``resume``), the Optuna objective (``objective``), how each attempt can end
(``outcomes``: one table) and which failures are tried again (``failures``), stop signals (``signals``), exact
trial totals (``slots``), the GPU and thread choice (``gpu_choice``, ``threads``), the pane's output (``console``)
and tmux (``tmux``)."""
