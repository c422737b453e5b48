"""Analysis of stored studies: status, report, export, rerun, the final evaluation and its
statistics, and the dashboard. Reads trials through the record module, never the trial runner."""
