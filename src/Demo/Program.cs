using LiveMigration.Demo;

// The demo: by default a local cluster (one Coordinator, two HostNodes) moves a running VM's disk while
// its guest writes; with --host-layer, the host layer alone in this process.
if (args is ["bench", "copy", .. var benchArgs]) return await LiveMigration.Demo.Bench.CopyBench.RunAsync(benchArgs);
if (args is ["bench", "copy-layers", .. var layerArgs]) return await LiveMigration.Demo.Bench.LayerCopyBench.RunAsync(layerArgs);
if (args is ["bench", "control-plane", .. var controlArgs]) return await LiveMigration.Demo.Bench.ControlPlaneBench.RunAsync(controlArgs);
if (args is ["bench", ..])
{
    Console.Error.WriteLine("usage: ./run.sh bench copy [--runs N] [--stall-migrations N]   (var/bench/copy.json)");
    Console.Error.WriteLine("       ./run.sh bench copy-layers [--rounds N] [--busy]   (var/bench/copy-layers.json)");
    Console.Error.WriteLine("       ./run.sh bench control-plane [--seconds N] [--in-flight N]   (var/bench/control-plane.json)");
    return 2;
}
var options = DemoOptions.Parse(args);
if (options is null) return 2;
return options.HostLayerOnly ? await HostLayerDemo.RunAsync(options) : await ClusterDemo.RunAsync(options);
