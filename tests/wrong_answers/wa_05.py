# course: instructor only -- wrong answers for the tasks of notebook 05
"""Plausible learner mistakes in tasks 05.1 and 05.2; tests/test_wrong_answers.py applies them."""

WRONG_ANSWERS = [
    dict(task="05.1", mistake="forgets to unscale the gradients (divide by the loss scale S)",
         old="master.grad = p.grad.float().mul_(inv_scale)", new="master.grad = p.grad.float()",
         hint="divided by the loss scale"),
    dict(task="05.1", mistake="updates the weights even when a gradient overflowed",
         old="if overflow:\n            self.skipped_steps += 1", new="if False:\n            pass",
         hint="skip"),
    dict(task="05.1", mistake="never tells the loss scaler about overflows",
         old="self.loss_scaler.update(overflow)", new="pass", hint="found_inf"),
    dict(task="05.1", mistake="never copies the updated masters back into the 16-bit model",
         old="p.copy_(master)  # round", new="pass  # round", hint="copy the masters back"),
    dict(task="05.1", mistake="keeps the 16-bit gradients after copying them",
         old="p.grad = None  # the 16-bit gradient is not needed any more", new="pass",
         hint="must be freed"),
    dict(task="05.1", mistake="ignores clip_grad",
         old="if self.clip_grad:", new="if False:", hint="clipped"),
    dict(task="05.1", mistake="fp32 parameters (their own masters) are left scaled",
         old="p.grad.mul_(inv_scale)", new="pass"),
    dict(task="05.1", mistake="clips the gradients before unscaling them",
         old="master.grad = p.grad.float().mul_(inv_scale)  # fp32 copy of the unscaled gradient",
         new="master.grad = p.grad.float()\n"
             "            if self.clip_grad:\n"
             "                torch.nn.utils.clip_grad_norm_([master], self.clip_grad)\n"
             "            master.grad.mul_(inv_scale)"),

    dict(task="05.2", mistake="an overflow does not reset the growth tracker",
         old="self.growth_tracker = 0\n            if self.scale == 0.0 < before:",
         new="if self.scale == 0.0 < before:", hint="tracker back to 0"),
    dict(task="05.2", mistake="grows one step late (tracker > growth_interval)",
         old="if self.growth_tracker == self.growth_interval:",
         new="if self.growth_tracker > self.growth_interval:"),
    dict(task="05.2", mistake="takes a grown scale that overflows fp32 (inf)",
         old="if math.isfinite(grown):", new="if True:", hint="would overflow fp32"),
    dict(task="05.2", mistake="does not reset the tracker after growing",
         old="                self.scale = grown\n            self.growth_tracker = 0",
         new="                self.scale = grown"),
    dict(task="05.2", mistake="backs off by dividing by growth_factor instead of multiplying by backoff_factor",
         old="to_fp32(self.scale * self.backoff_factor)", new="to_fp32(self.scale / self.growth_factor)",
         hint="backoff_factor"),
]
