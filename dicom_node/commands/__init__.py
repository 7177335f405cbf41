"""Sub-commands of the dicom-node CLI, one module each."""
