using System.Diagnostics;
using LiveMigration.HostNode.Hypervisor.Libvirt;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.Demo;

internal sealed record DemoOptions(string DataDir, long GuestRate, long MirrorSpeed, bool HostLayerOnly = false, string Hypervisor = "qmp")
{
    private const long MiB = 1 << 20;

    public static DemoOptions? Parse(string[] args)
    {
        var options = new DemoOptions("var/demo", 4 * MiB, 0);
        for (var i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            try
            {
                options = args[i] switch
                {
                    "--data-dir" => options with { DataDir = Value() },
                    "--guest-rate-mib" => options with { GuestRate = PositiveMiB(Value(), "--guest-rate-mib") },
                    "--mirror-speed-mib" => options with { MirrorSpeed = PositiveMiB(Value(), "--mirror-speed-mib", allowZero: true) },
                    "--host-layer" => options with { HostLayerOnly = true },
                    "--hypervisor" => options with { Hypervisor = ParseHypervisor(Value()) },
                    "-h" or "--help" => throw new ArgumentException(""),
                    _ => throw new ArgumentException($"unknown option {args[i]}"),
                };
            }
            catch (ArgumentException e)
            {
                if (e.Message.Length > 0) Console.Error.WriteLine($"demo: {e.Message}");
                Console.Error.WriteLine("usage: ./run.sh demo [--data-dir DIR] [--guest-rate-mib N] [--mirror-speed-mib N (0 = unlimited)] [--hypervisor qmp|libvirt] [--host-layer]");
                Console.Error.WriteLine("  --hypervisor libvirt   the hosts run the VM through libvirtd (started by deploy/libvirt/setup.sh when it does not answer; root)");
                Console.Error.WriteLine("  --host-layer           run the host layer alone in this process instead of a local cluster");
                Console.Error.WriteLine("example: ./run.sh demo --data-dir /tmp/lsm-demo --guest-rate-mib 8");
                return null;
            }
        }
        if (options.HostLayerOnly && options.Hypervisor != "qmp")
        {
            Console.Error.WriteLine("demo: --host-layer runs QEMU through its monitor only; --hypervisor libvirt is for the cluster demo");
            return null;
        }
        return options;
    }

    private static string ParseHypervisor(string text) =>
        text is "qmp" or "libvirt" ? text : throw new ArgumentException($"--hypervisor takes qmp or libvirt, got '{text}'");

    private static long PositiveMiB(string text, string option, bool allowZero = false) =>
        long.TryParse(text, out var n) && (n > 0 || allowZero && n == 0) && n <= 100_000
            ? n * MiB
            : throw new ArgumentException($"{option} takes a whole number of MiB{(allowZero ? " (0 or more)" : " above 0")}, got '{text}'");
}

internal static class DemoSetup
{
    /// <summary>Stops a VM a previous demo run left running (it outlives its host by design), then clears its data.</summary>
    public static async Task ClearPreviousRunAsync(string dataDir, bool libvirt = false)
    {
        // A previous run's nodes (or an `lsm local up` on this directory) are stopped the way `lsm local down` does.
        var stopped = await LiveMigration.Cli.Local.LocalClusterLauncher.DownAsync(dataDir);
        if (!stopped.NothingRan)
            Console.WriteLine($"stopped {stopped.StoppedNodes.Count} node(s) and {stopped.StoppedVmPids.Count} VM(s) left running in {dataDir}");
        foreach (var runDir in Directory.Exists(dataDir)
                     ? Directory.EnumerateDirectories(dataDir, "run", SearchOption.AllDirectories).ToList()
                     : [])
        {
            await using var previous = new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = runDir });
            foreach (var vm in await previous.AdoptRunningVmsAsync())
            {
                Console.WriteLine($"stopping VM {vm.Id} left running by a previous run");
                await previous.StopVmAsync(vm.Id);
            }
            // A libvirt run's domain (when its state file was lost): libvirtd answers here, the caller made sure.
            if (!libvirt) continue;
            await using var previousDomains = new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = runDir });
            foreach (var vm in await previousDomains.AdoptRunningVmsAsync())
            {
                Console.WriteLine($"stopping libvirt domain of VM {vm.Id} left running by a previous run");
                await previousDomains.StopVmAsync(vm.Id);
            }
        }
        if (Directory.Exists(dataDir))
            Directory.Delete(dataDir, recursive: true);
        Directory.CreateDirectory(dataDir);
    }

    /// <summary>The yardstick for the mirror's speed: qemu-img converting the whole chain into one new image.</summary>
    public static async Task<(TimeSpan Took, long Bytes)> TimeQemuImgConvertAsync(string leafPath, string target)
    {
        var map = await ProcessRunner.RunCheckedAsync("qemu-img", ["map", "-U", "--output=json", leafPath], ErrorCodes.QemuImgFailed);
        var bytes = System.Text.Json.JsonDocument.Parse(map).RootElement.EnumerateArray()
            .Where(e => e.GetProperty("data").GetBoolean())
            .Sum(e => e.GetProperty("length").GetInt64());
        var watch = Stopwatch.StartNew();
        await ProcessRunner.RunCheckedAsync("qemu-img", ["convert", "-U", "-O", "qcow2", leafPath, target], ErrorCodes.QemuImgFailed);
        var took = watch.Elapsed;
        File.Delete(target);
        return (took, bytes);
    }
}
