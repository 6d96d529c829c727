"""The default configuration of a Butler Pipelines repository (YAML files read at ``butler create``)."""
