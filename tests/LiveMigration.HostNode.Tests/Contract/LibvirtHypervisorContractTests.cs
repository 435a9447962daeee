using System.Diagnostics;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Libvirt;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.HostNode.Tests.Contract.Real;
using LiveMigration.HostNode.Tests.Libvirt;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Contract;

/// <summary>The same contract as the qmp adapter, against libvirtd (started by deploy/libvirt/setup.sh) and file domains.</summary>
[Collection(LibvirtCollection.Name)]
public sealed class LibvirtHypervisorContractTests(LibvirtDaemonFixture daemon) : HypervisorContract
{
    private readonly string _root = FileLayerData.NewShortRoot();
    private readonly LibvirtDaemonFixture _daemon = daemon;

    private string RunDirectory => Path.Combine(_root, "run");

    protected override async Task<(IStorageDomain Source, IStorageDomain Destination)> CreateDomainsAsync()
    {
        Directory.CreateDirectory(_root);
        var domains = Path.Combine(_root, "sd");
        return (await FileStorageDomain.CreateAsync(domains, DomainId.New(), "file-a", 1L << 30),
                await FileStorageDomain.CreateAsync(domains, DomainId.New(), "file-b", 1L << 30));
    }

    protected override Task WriteLayerDataAsync(IStorageDomain domain, ImageId image, VolumeId volume, long offset, long length, byte pattern) =>
        FileLayerData.WriteAsync(domain, image, volume, offset, length, pattern);

    protected override IHypervisor CreateHypervisor(StoragePool pool) =>
        new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = RunDirectory, CommandTimeout = TimeSpan.FromSeconds(20) });

    /// <summary>SIGKILL to QEMU behind libvirt's back, as a crash; libvirtd notices the monitor's end.</summary>
    protected override async Task KillVmProcessAsync(VmInfo vm)
    {
        var pid = vm.Pid ?? throw new InvalidOperationException($"VM {vm.Id} has no pid to kill (libvirtd's pid file unreadable?)");
        try
        {
            using var process = Process.GetProcessById(pid);
            process.Kill();
        }
        catch (ArgumentException) { return; }
        catch (InvalidOperationException) { return; }
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (Directory.Exists($"/proc/{pid}") && !File.ReadAllText($"/proc/{pid}/stat").Contains(") Z", StringComparison.Ordinal))
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"QEMU pid {pid} still runs 10 s after SIGKILL");
            await Task.Delay(20);
        }
    }

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        // Every domain this host started (its run directory is their owner) is destroyed, then the folders go.
        await using (var stopper = CreateHypervisor(Pool))
        {
            foreach (var vm in await stopper.AdoptRunningVmsAsync()) await stopper.StopVmAsync(vm.Id);
        }
        FileLayerData.DeleteRoot(_root);
        GC.KeepAlive(_daemon);
    }
}
