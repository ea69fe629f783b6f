"""Study specs (``studies/*.toml``): the model (``model``: ``StudySpec``, its space, config and fingerprint), the
parser and its checks (``checks``: ``load_spec``; every error names the file, the key and what was expected) and
the search strategy it names (``strategy``: sampler, pruner, startup points). Import from here."""
from search.spec.checks import DEFAULT_KEEP_WEIGHTS, load_spec, parse_spec
from search.spec.model import (
                               DATA_ENV,
                               DEMO,
                               PER_MACHINE_KEYS,
                               Kernel,
                               Param,
                               SpecError,
                               StudySpec,
                               builtin_data,
                               find_spec,
                               spec_differences,
)

__all__ = ["DATA_ENV", "DEFAULT_KEEP_WEIGHTS", "DEMO", "PER_MACHINE_KEYS", "Kernel", "Param", "SpecError", "StudySpec",
           "builtin_data", "find_spec", "load_spec", "parse_spec", "spec_differences"]
