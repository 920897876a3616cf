"""Face backbones, registered in plsc.registry.MODELS by the names configs use:
IResNet18/34/50/100/200/2060, MobileFaceNet_base/large, FaceViT_{tiny,small,base,large,huge}_patch9_112,
IR_18/34/50/101 and IR_SE_50 (AdaFace).

    model = MODELS.build("IResNet50", num_features=512, data_format="NCHW", dropout=0.0, recompute=False)
    emb = model(images)        # float32 [N, 3, 112, 112] NCHW RGB in [-1, 1] -> [N, num_features]
    model.fp32_layers()        # sublayers kept fp32 under FP16 O2
"""
from plsc.models import face_vit, iresnet, ir, mobilefacenet  # noqa: F401  (registers the builders)
from plsc.models.common import Backbone, count_params  # noqa: F401
from plsc.models.complexity import count_macs  # noqa: F401
from plsc.models.loading import check_backbone_state, load_backbone  # noqa: F401
