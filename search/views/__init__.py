"""Read-only views of a study: the report (``report``) with its plots (``plots``, ``figures``), the dashboard notes
(``notes``), the status table (``status``), the checks after a study (``checks``), the SSH tunnel line
(``tunnel``) and the shared formatting of values and durations (``format``)."""
