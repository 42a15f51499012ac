"""Send stage: C-STORE and C-ECHO as a service class user."""
