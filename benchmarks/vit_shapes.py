"""The ViT shapes the speed benchmarks time: ViT-B/16 (`full`) and a small one (`quick`)."""

SHAPES = {
    "full": dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072),
    "quick": dict(image_size=64, patch_size=16, hidden_size=128, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=512),
}  # fmt: skip
