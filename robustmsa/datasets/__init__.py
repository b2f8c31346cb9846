"""Data layer: MMSA splits in memory, safe loading, validation, the registry and the synthetic benchmark."""

from .errors import DataFormatError, PickleLimitError, UnreadablePickleError
from .build import FeatureFileError, LabelTableError, build_dataset, build_to_file, read_label_table
from .io import load, read_mmsa_pickle, write_mmsa_pickle
from .mag import convert_mag_to_file, looks_like_mag, read_mag_pickle
from .registry import DATASETS, LABEL_RANGES, DatasetEntry, list_datasets, resolve_data_root
from .safe_pickle import UnsafePickleError, safe_load_pickle
from .split import (CLS_ID, MODALITIES, PAD_ID, SEP_ID, SPLIT_NAMES, UNK_ID, Dataset, DatasetSpec, Split,
                    content_hash)
from .validate import DataValidationError, NonFiniteFeaturesWarning, ValidationReport

__all__ = [
    "load", "read_mmsa_pickle", "write_mmsa_pickle", "DATASETS", "LABEL_RANGES", "DatasetEntry", "list_datasets",
    "resolve_data_root", "UnsafePickleError", "safe_load_pickle", "CLS_ID", "MODALITIES", "PAD_ID", "SEP_ID",
    "SPLIT_NAMES", "UNK_ID", "Dataset", "DatasetSpec", "Split", "content_hash", "DataValidationError",
    "NonFiniteFeaturesWarning", "ValidationReport", "read_mag_pickle", "looks_like_mag", "convert_mag_to_file",
    "build_dataset", "build_to_file", "read_label_table", "LabelTableError", "FeatureFileError",
    "DataFormatError", "UnreadablePickleError", "PickleLimitError",
]
