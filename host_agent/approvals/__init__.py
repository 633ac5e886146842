"""Human approvals: tokens, the store, the state machine and the Signal channel."""
