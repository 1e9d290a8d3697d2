"""The `protege` command: one entry point over the gateway's, the distiller's and the model server's commands."""
