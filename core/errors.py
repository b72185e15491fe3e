"""Exceptions with messages meant for people: each says what was wrong and what to do."""


class ArmadaError(Exception):
    """Base class for errors Armada reports to the user without a traceback."""


class InputError(ArmadaError, ValueError):
    """Bad user input: empty, too large, binary or undecodable."""


class IngestError(ArmadaError):
    """A file or folder could not be ingested."""


class ModelError(ArmadaError):
    """A model could not be found, loaded or run."""


class PluginError(ArmadaError):
    """An agent plugin is malformed or clashes with another."""


class StoreError(ArmadaError):
    """The database could not be opened or migrated."""


class AdapterError(ArmadaError):
    """A LoRA adapter is missing, damaged, unsafe or made for another base model."""
