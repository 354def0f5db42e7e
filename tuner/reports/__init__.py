"""The reports: rows, tables, views, charts and exporters over stored studies. Read-only: nothing
here measures or writes a study."""
