"""Replica pools: target health with cool-downs (:mod:`.health`) and replica choice (:mod:`.balance`)."""
