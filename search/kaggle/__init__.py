"""From a study to a Kaggle submission: which trial or ensemble (``study_export``, ``ensemble``), its members'
weights and the export folder (``export``), the self-contained kernel.py (``kernel``) and the driver it carries
(``kernel_main``), and the ensemble's held-out report (``ensemble_report``)."""
