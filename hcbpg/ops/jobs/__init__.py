"""Jobs hcbpg installs on the servers, as the files they run (standard library only)."""
