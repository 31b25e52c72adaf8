"""Volume rendering shared by the neural-field teacher (`teachers.nerf`) and the student:
the contraction of unbounded space into the unit cube (`contraction`) and compositing
along rays (`compositing`: weights, opacity, expected and median depth, the distortion
loss), each with a plainly written reference the tests compare against. Plain torch, on
whatever device its inputs are on."""
