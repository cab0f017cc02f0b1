"""The operator's faces: the status report, the terminal board, the HTTP endpoints and the
demo. They read a snapshot the agent hands them (models.AgentSnapshot), never the agent."""
