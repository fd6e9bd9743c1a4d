"""The AWS shell: the Lambda handler, its events, settings, credentials, policy source, fan-out."""
