"""crm_lite: members, points, lottery and mobile approvals for the merchants a deployment
serves, driven by SMS commands and a REST API. Domain logic over the gateway's store; it sends
only through the gateway's own pipeline (:class:`gateway.router.commands.Outbox`)."""
