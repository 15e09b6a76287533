"""The project's own exception types.

Every failure that a user can cause (a bad alias, a missing corpus, an out-of-range layer, an
analysis a model cannot provide) raises a subclass of :class:`NeuronbenchError` whose message
names what failed and how to fix it. Nothing is silently replaced.
"""


class NeuronbenchError(Exception):
    """Base class of every error raised on purpose by neuronbench."""


class UnknownModelError(NeuronbenchError):
    """A model name is neither a known alias, an existing local directory nor a hub id."""


class ModelLoadError(NeuronbenchError):
    """A model could not be loaded (not cached offline, no config.json, corrupted weights, ...)."""


class UnsupportedArchitectureError(NeuronbenchError):
    """A model's ``config.model_type`` has no adapter."""


class LayerRangeError(NeuronbenchError):
    """A layer index outside ``0 .. num_layers - 1``."""


class NeuronRangeError(NeuronbenchError):
    """A neuron index outside ``0 .. width - 1`` of its layer."""


class CorpusError(NeuronbenchError):
    """A corpus is unknown, missing, empty, or too small for what was asked."""


class CaptureError(NeuronbenchError):
    """A hook did not see the tensor it was registered for, or saw one of the wrong shape."""


class NonFiniteActivationError(CaptureError):
    """A captured activation (neurons, Δ) is NaN or infinite."""


class AnalysisUnavailableError(NeuronbenchError):
    """An analysis was asked of a model that cannot provide it (e.g. Δ of a transformer)."""


class CacheError(NeuronbenchError):
    """A cache file is unreadable, truncated, altered, or was made for another key."""


class ConfigError(NeuronbenchError):
    """An option or threshold is out of its valid range."""


class NonFiniteLossError(NeuronbenchError):
    """A scored token's negative log-likelihood is NaN or infinite."""
