"""Time the train and eval steps of JAX and PyTorch on the same model, batch and data.

    python scripts/bench.py --model vgg16 --image-size 32 --batch-size 32 [--framework both] [--precision bf16]
    python scripts/bench.py --sweep        # vgg16, vgg16_gap, vgg16_dsconv, student_cnn, resnet50 at 32/64/112/224 px

The benchmark is jaxvgg.tools.bench: the training run's own state builder and steps, timed.
"""

from jaxvgg.tools.bench import main

if __name__ == "__main__":
    main()
