"""Everything EMR: the cluster spec, its bootstrap, the step launcher and the remote step entry."""
