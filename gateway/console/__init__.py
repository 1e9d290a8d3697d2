"""The admin console under `/admin/ui`: server-rendered pages, and errors as pages."""
