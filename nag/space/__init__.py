"""Search spaces, architectures and their analytic costs."""

from nag.space.arch import (
    SPACE_DIMENSIONS,
    Architecture,
    Decision,
    StageArch,
    assemble,
    biggest,
    decisions,
    from_tokens,
    mutate,
    resolve_arch,
    sample_uniform,
    smallest,
    to_tokens,
    validate,
)
from nag.space.dimensions import (
    Dimension,
    Scope,
    register_dimension,
    registered_dimensions,
    space_dimensions,
    unregister_dimension,
)
from nag.space.neighbours import DIMENSIONS, with_dimension_of
from nag.space.plan import BlockPlan, ChildPlan, child_plan, count_macs, count_params
from nag.space.sampling import sample_stratified, sample_tilted
from nag.space.space import SearchSpace, StageSpec, load_space

__all__ = [
    "DIMENSIONS",
    "SPACE_DIMENSIONS",
    "Architecture",
    "BlockPlan",
    "ChildPlan",
    "Decision",
    "Dimension",
    "Scope",
    "SearchSpace",
    "StageArch",
    "StageSpec",
    "assemble",
    "biggest",
    "child_plan",
    "count_macs",
    "count_params",
    "decisions",
    "from_tokens",
    "load_space",
    "mutate",
    "register_dimension",
    "registered_dimensions",
    "resolve_arch",
    "sample_stratified",
    "sample_tilted",
    "sample_uniform",
    "smallest",
    "space_dimensions",
    "to_tokens",
    "unregister_dimension",
    "validate",
    "with_dimension_of",
]
