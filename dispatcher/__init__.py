"""The HistoryGen image dispatcher: Postgres queue in, RunPod jobs out, PNGs stored."""
