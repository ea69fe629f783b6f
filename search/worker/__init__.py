"""A worker process: the loop over trials (``lifecycle``), one trial's attempt and resume (``trial_run``), the
Optuna objective (``objective``), what each failure means (``failures``), exact trial totals (``slots``), the GPU
and thread choice (``gpu_choice``), the pane's output (``console``) and tmux (``tmux``)."""
