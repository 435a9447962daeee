using LiveMigration.Cli.Api;
using LiveMigration.Cli.Local;
using LiveMigration.Demo.Cluster;
using LiveMigration.HostNode.Hypervisor.Libvirt;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// <c>lsm local up --hypervisor libvirt</c> as a process: it refuses (naming deploy/libvirt/setup.sh) when libvirtd
/// does not answer, starts every host with the libvirt adapter when it does, and down destroys the libvirt domains
/// its hosts own, and no other.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class LocalLibvirtCommandTests : IAsyncLifetime
{
    private readonly string _dataDirectory = Path.Combine("/tmp", $"lsm-{Guid.NewGuid().ToString("N")[..8]}");

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (Directory.Exists(_dataDirectory))
        {
            await LocalClusterLauncher.DownAsync(_dataDirectory);
            Directory.Delete(_dataDirectory, recursive: true);
        }
    }

    [Fact]
    public async Task Up_with_libvirt_refuses_before_starting_anything_when_libvirtd_does_not_answer()
    {
        // A libvirt URI whose socket does not exist: no daemon answers there, whether or not the machine runs one.
        var nowhere = $"qemu+unix:///system?socket={_dataDirectory}/none.sock";
        var up = await CliProcess.RunAsync(null, "local", "up", "--hypervisor", "libvirt", "--libvirt-uri", nowhere,
            "--data-dir", _dataDirectory, "--api-port", "0");
        Assert.True(up.ExitCode == ExitCodes.OperationFailed, up.ToString());
        Assert.Contains("libvirtd does not answer", up.Stderr);
        Assert.Contains("deploy/libvirt/setup.sh", up.Stderr);
        Assert.False(File.Exists(LocalClusterState.PathIn(_dataDirectory)), "a refused up wrote a state file");

        var unknown = await CliProcess.RunAsync(null, "local", "up", "--hypervisor", "xen", "--data-dir", _dataDirectory);
        Assert.True(unknown.ExitCode == ExitCodes.BadUsage, unknown.ToString());
        Assert.Contains("--hypervisor must be qmp, libvirt or sim", unknown.Stderr);

        var uriWithoutLibvirt = await CliProcess.RunAsync(null, "local", "up", "--libvirt-uri", "qemu:///session", "--data-dir", _dataDirectory);
        Assert.True(uriWithoutLibvirt.ExitCode == ExitCodes.BadUsage, uriWithoutLibvirt.ToString());
        Assert.Contains("need --hypervisor libvirt", uriWithoutLibvirt.Stderr);
    }

    [Fact]
    public async Task Up_with_libvirt_runs_every_host_on_the_libvirt_adapter_and_down_destroys_only_its_hosts_domains()
    {
        await using var daemon = await LibvirtDaemon.EnsureRunningAsync();
        Directory.CreateDirectory(_dataDirectory);
        var domain = await FileStorageDomain.CreateAsync(LocalCluster.DomainRootOf(_dataDirectory), DomainId.New(), "domain-a", 1L << 30);
        var pool = new StoragePool([domain]);
        var (ownImage, _) = await SampleImage.CreateThreeVolumeChainAsync(domain, SampleImageLayout.Small);
        var (foreignImage, _) = await SampleImage.CreateThreeVolumeChainAsync(domain, SampleImageLayout.Small);

        // One domain owned by host-1's run directory (as host-1 would start it), one owned by a directory no host of this cluster has.
        var ownVm = VmId.New();
        var foreignVm = VmId.New();
        var foreignRun = Path.Combine(_dataDirectory, "elsewhere", "run");
        await using var own = new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = LocalCluster.HostRunDirectoryOf(_dataDirectory, "host-1") });
        await using var foreign = new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = foreignRun });
        try
        {
            await own.StartVmAsync(new VmSpec(ownVm, "own", [await pool.ResolveChainAsync(domain.Id, ownImage)]));
            await foreign.StartVmAsync(new VmSpec(foreignVm, "foreign", [await pool.ResolveChainAsync(domain.Id, foreignImage)]));

            var up = await CliProcess.RunAsync(null, "local", "up", "--hypervisor", "libvirt", "--hosts", "2", "--data-dir", _dataDirectory,
                "--api-port", "0", "--fast-timings");
            Assert.True(up.ExitCode == 0, up.ToString());
            var state = await LocalClusterState.ReadAsync(_dataDirectory) ?? throw new Xunit.Sdk.XunitException($"no state file after up\n{up}");
            Assert.Equal("libvirt", state.Hypervisor);
            Assert.Equal(LibvirtCheck.DefaultUri, state.LibvirtUri);
            foreach (var host in state.Nodes.Where(n => n.Role.StartsWith("host")))
            {
                var commandLine = ProcessTable.CommandLine(host.Pid);
                var at = commandLine.ToList().IndexOf("--hypervisor");
                Assert.True(at > 0 && commandLine[at + 1] == "libvirt", $"{host.Name}: {string.Join(' ', commandLine)}");
            }

            // host-1 came up on libvirt: the inventory shows the domain it adopted.
            var vms = await CliProcess.RunAsync(null, "vms", "--api", state.ApiUrl, "--json");
            Assert.True(vms.ExitCode == 0, vms.ToString());
            Assert.Contains(ownVm.ToString(), vms.Stdout);
            Assert.DoesNotContain(foreignVm.ToString(), vms.Stdout);

            var status = await CliProcess.RunAsync(null, "local", "status", "--data-dir", _dataDirectory);
            Assert.Contains("hypervisor libvirt", status.Stdout);

            var down = await CliProcess.RunAsync(null, "local", "down", "--data-dir", _dataDirectory, "--json");
            Assert.True(down.ExitCode == 0, down.ToString());
            Assert.Contains($"lsm-{ownVm}", down.Stdout);
            Assert.Empty(await own.AdoptRunningVmsAsync());
            Assert.Contains(await foreign.AdoptRunningVmsAsync(), v => v.Id == foreignVm);
        }
        finally
        {
            await own.StopVmAsync(ownVm);
            await foreign.StopVmAsync(foreignVm);
        }
    }
}
