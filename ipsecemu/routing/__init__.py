"""Dynamic routing for the labs: typed routing intent (:mod:`.intent`), Azure's side with Azure's numbers
and hub route selection (:mod:`.azure`), FRR config generation (:mod:`.render`) and one FRR instance per
node inside its netns (:mod:`.frr`).

Layer: a daemon package (like the strongSwan glue); it imports only :mod:`ipsecemu.base`.  The lab's
plan turns its YAML into :class:`~ipsecemu.routing.intent.RoutingNode` values and runs
:class:`~ipsecemu.routing.frr.FrrInstance` for each routing node.
"""
