"""Scale-out: device meshes and logical axes (``sharding``), multi-host start-up (``distributed``) and
memory estimates checked before work (``memory``); ``sjd-jax shard-plan`` is ``cli.shard_plan``."""
