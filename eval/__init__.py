"""Zero-shot evaluators: COCO/LVIS box-prompted mAP and mIoU, and simulated-click mIoU."""
