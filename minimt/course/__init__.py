"""minimt.course: the course itself. Tasks the learner writes in the package, the student copy,
the grader, catch-up for workshops and the rendered site (`python -m minimt.course --help`)."""
