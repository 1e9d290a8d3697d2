"""The other /v1 routes apps call, forwarded to the teacher."""
