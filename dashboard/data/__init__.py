"""The dashboard's data layer: plain functions, no Streamlit.

Finding runs (workspace, DVC experiments, commits), loading tables and arrays
(returned as pandas/numpy, never open files), joining per-stage parts,
Procrustes alignment of two landscapes, selection files, diagnostics and
drill-down helpers.  Every function is unit-tested without Streamlit
(tests/dashboard/test_dashboard_data.py); the pages only add widgets and plots.
"""

from dashboard.data.loaders import (OutputCorrupt, OutputError, OutputMissing, file_identity,
                                    read_h5, read_json, read_table)

__all__ = ["OutputCorrupt", "OutputError", "OutputMissing", "file_identity", "read_h5",
           "read_json", "read_table"]
