"""Routing on the request path: plans (which models, in which order) and failover between them."""
