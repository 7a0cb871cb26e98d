"""The public file formats of MIMIC-CXR-JPG 2.x, CheXpert v1.0 and NIH ChestX-ray14: file names, headers,
value conventions. The synthetic writer and the loaders both read these constants, so a format is spelled
once."""

from __future__ import annotations

from chexrl.core.label_mapping import NIH14
from chexrl.core.schemas import CHEXPERT14

# ---- MIMIC-CXR-JPG 2.0.0 / 2.1.0 (PhysioNet). Real files ship gzipped: <name>.csv.gz.
MIMIC_PREFIX = "mimic-cxr-2.0.0"
MIMIC_CHEXPERT_CSV = f"{MIMIC_PREFIX}-chexpert.csv"
MIMIC_NEGBIO_CSV = f"{MIMIC_PREFIX}-negbio.csv"
MIMIC_METADATA_CSV = f"{MIMIC_PREFIX}-metadata.csv"
MIMIC_SPLIT_CSV = f"{MIMIC_PREFIX}-split.csv"
# Label columns are the 14 CheXpert labels in alphabetical order (same as chexrl's CHEXPERT14).
MIMIC_LABEL_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", *CHEXPERT14)
MIMIC_METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
MIMIC_SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
MIMIC_SPLITS: tuple[str, ...] = ("train", "validate", "test")
FRONTAL_VIEWS: frozenset[str] = frozenset({"PA", "AP"})


def mimic_image_relpath(subject_id: int | str, study_id: int | str, dicom_id: str) -> str:
    """files/p10/p10000032/s50414267/<dicom_id>.jpg

    >>> mimic_image_relpath(10000032, 50414267, "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014")
    'files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg'
    """
    subject = str(subject_id)
    return f"files/p{subject[:2]}/p{subject}/s{study_id}/{dicom_id}.jpg"


# ---- CheXpert v1.0 (and -small): train.csv / valid.csv, image level.
CHEXPERT_LABEL_ORDER: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHEXPERT_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABEL_ORDER)
CHEXPERT_SMALL_PREFIX = "CheXpert-v1.0-small"
# The CheXpert test set release (500 studies, radiologist consensus): study level, 0/1, alphabetical labels.
CHEXPERT_TEST_CSV = "groundtruth.csv"
CHEXPERT_TEST_COLUMNS: tuple[str, ...] = ("Study", *CHEXPERT14)
CHEXPERT_FIRST_VALID_PATIENT = 64541  # train: patient00001..patient64540
CHEXPERT_FIRST_TEST_PATIENT = 64741  # valid: patient64541..patient64740

# ---- NIH ChestX-ray14.
NIH_TABLE_V2020 = "Data_Entry_2017_v2020.csv"
NIH_TABLE_2017 = "Data_Entry_2017.csv"
NIH_TRAIN_VAL_LIST = "train_val_list.txt"
NIH_TEST_LIST = "test_list.txt"
# Header as written in both files; the bracketed pairs are two CSV fields each, so pandas sees the columns
# "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]". The 2017 file ends every line
# (header included) with an extra comma: an 12th, unnamed, empty column.
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
NIH_COLUMNS: tuple[str, ...] = tuple(NIH_HEADER.split(","))
NIH_FINDINGS = NIH14
NIH_SPLITS: tuple[str, ...] = ("train_val", "test")

# ---- NIH expert relabels (Majkowska et al. 2020, as TorchXRayVision ships them): the NIH table's columns
# with the four adjudicated findings (YES/NO) and `Set Id` (val 2,414 / test 1,962 rows) appended.
NIH_EXPERT_CSV = "google2019_nih-chest-xray-labels.csv"
NIH_EXPERT_HEADER = NIH_HEADER + ",Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id"
NIH_EXPERT_SPLITS: tuple[str, ...] = ("val", "test")

# ---- VinDr-CXR, Kaggle form: train.csv, one row per (image, reader, finding) with a box, images as
# train/<image_id>.<ext> (the DICOMs converted to PNG or JPEG; `images=` picks the extension).
VINDR_CSV = "train.csv"
VINDR_COLUMNS: tuple[str, ...] = (
    "image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"
)  # fmt: skip
VINDR_IMAGE_DIR = "train"
VINDR_IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "dicom")

# ---- PadChest: one row per image, images as <ImageDir>/<ImageID>.
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_COLUMNS: tuple[str, ...] = (
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "ReportID",
    "MethodLabel", "Labels", "Localizations", "LabelsLocalizationsBySentence", "labelCUIS",
    "LocalizationsCUIS",
)  # fmt: skip
PADCHEST_FRONTAL: frozenset[str] = frozenset({"PA", "AP", "AP_horizontal"})
PADCHEST_PHYSICIAN = "Physician"
