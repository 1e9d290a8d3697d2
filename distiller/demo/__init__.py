"""`protege demo`: capture → distil → cascade on a built-in support-ticket workload, with a report."""
