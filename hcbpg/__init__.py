"""hcbpg: executable runbooks for moving HCB's PostgreSQL off Heroku onto Hetzner Cloud."""
