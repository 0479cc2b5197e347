"""Planning with Cosmos Policy: best-of-N search over action chunks scored by the world model and the
value function (the reference's deploy-server planning mode). See docs/planning.md."""
