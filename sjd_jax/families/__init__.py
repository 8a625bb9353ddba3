"""Model families as plug-ins: one module per family (``fashion_mnist``, ``llamagen_c2i``,
``llamagen_t2i``, ``janus``, ``lumina``, ``emu3``), each registering itself in the registry
(``sjd_jax.core.registry``, re-exported here), plus ``prompting``, ``presets`` and ``pipelines``."""

from sjd_jax.core.registry import (MODULES, SNAPSHOT_FILES, TASKS, Family, HubStep, Kind, Pretrained,  # noqa: F401
                                   converter, converter_names, entries, for_kind, for_model, get, kind, kind_names,
                                   model_names, names, pretrained, pretrained_names, register, unregister)
