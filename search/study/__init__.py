"""The study as a record (no training here): where a study lives (``locate``), its storage (``storage``), joining
it (``join``), its trials and their best, baseline and configs (``record``), each trial's files in the artifact
store (``artifacts``) and trials inherited from an earlier round (``inherit``)."""
