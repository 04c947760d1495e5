# course: instructor only -- wrong answers for the tasks of notebook 07
"""Plausible learner mistakes in tasks 07.1-07.3; tests/test_wrong_answers.py applies them."""

WRONG_ANSWERS = [
    dict(task="07.1", mistake="sends and receives the chunk one step ahead: ends on another chunk",
         old="send_index, recv_index = (me - step - 1) % n, (me - step - 2) % n",
         new="send_index, recv_index = (me - step) % n, (me - step - 1) % n"),
    dict(task="07.1", mistake="runs n steps instead of n - 1",
         old="for step in range(n - 1):", new="for step in range(n):"),
    dict(task="07.1", mistake="replaces the chunk by the incoming one instead of adding",
         old="chunks[recv_index] += incoming", new="chunks[recv_index] = incoming"),
    dict(task="07.1", mistake="sends with torch.distributed directly: the CommCounter sees nothing",
         old="work = isend(chunks[send_index], right, ctx, tag=step, group=group)",
         new="work = torch.distributed.isend(chunks[send_index].contiguous(), right, tag=step)",
         hint="one chunk per step"),
    dict(task="07.1", mistake="walks the ring the other way for the indices (me + step)",
         old="send_index, recv_index = (me - step - 1) % n, (me - step - 2) % n",
         new="send_index, recv_index = (me + step) % n, (me + step - 1) % n"),
    dict(task="07.1", mistake="adds the incoming chunk into the chunk it just sent",
         old="chunks[recv_index] += incoming", new="chunks[send_index] += incoming"),

    dict(task="07.2", mistake="launches each bucket as soon as it is full, out of bucket order",
         old="self.buckets[self._bucket_of[id(param)]].pending -= 1\n"
             "        while (self._next_bucket < len(self.buckets)\n"
             "               and self.buckets[self._next_bucket].pending == 0):\n"
             "            self._launch(self.buckets[self._next_bucket])\n"
             "            self._next_bucket += 1",
         new="bucket = self.buckets[self._bucket_of[id(param)]]\n"
             "        bucket.pending -= 1\n"
             "        if bucket.pending == 0:\n"
             "            self._launch(bucket)\n"
             "            self._next_bucket += 1",
         hint="out of order"),
    dict(task="07.2", mistake="never counts the bucket down: everything launches after the backward",
         old="self.buckets[self._bucket_of[id(param)]].pending -= 1", new="pass",
         hint="no overlap"),
    dict(task="07.2", mistake="counts down the next bucket to launch, not the parameter's own",
         old="self.buckets[self._bucket_of[id(param)]].pending -= 1",
         new="self.buckets[min(self._next_bucket, len(self.buckets) - 1)].pending -= 1"),
    dict(task="07.2", mistake="launches a bucket one gradient early (pending <= 1)",
         old="and self.buckets[self._next_bucket].pending == 0):",
         new="and self.buckets[self._next_bucket].pending <= 1):"),
    dict(task="07.2", mistake="launches a ready bucket but forgets the later ones already full",
         old="while (self._next_bucket < len(self.buckets)", new="if (self._next_bucket < len(self.buckets)", hint="EVERY ready bucket"),
    dict(task="07.2", mistake="launches every bucket whose count reached 0 on every call (twice)",
         old="            self._launch(self.buckets[self._next_bucket])\n            self._next_bucket += 1",
         new="            self._launch(self.buckets[self._next_bucket])\n            self._next_bucket += 1\n"
             "        for later in self.buckets[:self._next_bucket - 1]:\n"
             "            if later.pending == 0 and param is self.buckets[-1].params[-1]:\n"
             "                self._launch(later)",
         hint="one per bucket"),

    dict(task="07.3", mistake="sums the gradients over dp instead of averaging them",
         old="flat = self.flat_grads().div_(self.ctx.dp_size)", new="flat = self.flat_grads()",
         hint="SUM"),
    dict(task="07.3", mistake="leaves out phase=\"optimizer\" on the reduce-scatter",
         old="grad = reduce_scatter(flat, self.ctx, \"dp\", phase=\"optimizer\")",
         new="grad = reduce_scatter(flat, self.ctx, \"dp\")", hint="phase=\"optimizer\""),
    dict(task="07.3", mistake="skips unscaling and clipping",
         old="if not self.unscale_and_clip(grad):\n            return False", new="pass",
         hint="unscale_and_clip"),
    dict(task="07.3", mistake="never copies the gathered shards into the parameters",
         old="self.flat_params.copy_(gathered)", new="pass"),
    dict(task="07.3", mistake="divides by dp twice (before and after the reduce-scatter)",
         old="if not self.unscale_and_clip(grad):", new="grad.div_(self.ctx.dp_size)\n"
             "        if not self.unscale_and_clip(grad):"),
    dict(task="07.3", mistake="all-gathers the gradient shard instead of the updated master",
         old="gathered = all_gather(self.master.to(self.dtype),",
         new="gathered = all_gather(grad.to(self.dtype),"),
]
