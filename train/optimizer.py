"""airbench's SGD (Jordan 2024): Nesterov SGD with lookahead and fast BatchNorm biases.

* Lookahead: a slow copy of the weights; every ``every`` steps it moves towards the fast
  weights by ``1 - decay`` and the fast weights restart from it. The decay grows as
  ``final_decay * (step / total_steps) ** 3``: almost no averaging early, when progress matters,
  and strong averaging late, when noise does. ``every=0`` turns it off.
* BatchNorm biases learn ``norm_bias_lr_scale`` times faster than the other weights (airbench:
  64); weight decay stays the same for them (Keras applies it at the unscaled rate).

Both live in the optimizer rather than in a callback so that they run inside the compiled
training step on every backend (a JAX callback's weight changes would be lost), and so that the
slow weights are optimizer variables, saved and restored with every checkpoint.
"""

from __future__ import annotations

import keras
from keras import ops


def is_norm_bias(variable: keras.Variable) -> bool:
    """A BatchNormalization layer's bias (``beta``), by the Keras variable's path."""
    return variable.path.endswith("/beta") and "batch_normalization" in variable.path


@keras.saving.register_keras_serializable(package="edgepack")
class AirbenchSGD(keras.optimizers.SGD):
    def __init__(
        self,
        *args,
        total_steps: int = 1,
        every: int = 5,
        final_decay: float = 0.95**5,
        norm_bias_lr_scale: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if total_steps < 1 or every < 0 or not 0 <= final_decay < 1 or norm_bias_lr_scale <= 0:
            raise ValueError("needs total_steps >= 1, every >= 0, 0 <= final_decay < 1 and norm_bias_lr_scale > 0")
        self.total_steps, self.every, self.final_decay = total_steps, every, final_decay
        self.norm_bias_lr_scale = norm_bias_lr_scale

    def build(self, variables) -> None:
        if self.built:
            return
        super().build(variables)
        self.slow = self.add_optimizer_variables(variables, "slow") if self.every else []
        # Decided here, on Keras variables: on TensorFlow, update_step receives the backend's own
        # tf.Variable, which has no Keras path (matching on it silently scaled nothing).
        self.fast_bias = [is_norm_bias(variable) for variable in variables]

    def update_step(self, gradient, variable, learning_rate) -> None:
        if self.norm_bias_lr_scale != 1.0 and self.fast_bias[self._get_variable_index(variable)]:
            learning_rate = learning_rate * self.norm_bias_lr_scale
        super().update_step(gradient, variable, learning_rate)
        if self.every:
            self._lookahead(variable)

    def _lookahead(self, variable) -> None:
        step = ops.cast(self.iterations + 1, variable.dtype)  # steps done, this one included
        progress = ops.minimum(step / self.total_steps, 1.0)
        # The first sync only starts the slow copy (it begins at zero): decay 0 copies the weights.
        decay = ops.where(step <= self.every, 0.0, self.final_decay * progress**3)
        sync = ops.cast(ops.equal(ops.mod(self.iterations + 1, self.every), 0), variable.dtype)
        slow = self.slow[self._get_variable_index(variable)]
        blended = slow + (1.0 - decay) * (variable - slow)
        self.assign(slow, slow + sync * (blended - slow))
        self.assign(variable, variable + sync * (blended - variable))

    def get_config(self) -> dict:
        return super().get_config() | {
            "total_steps": self.total_steps,
            "every": self.every,
            "final_decay": self.final_decay,
            "norm_bias_lr_scale": self.norm_bias_lr_scale,
        }
