using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Model;
using static LiveMigration.HostNode.Tests.Hypervisor.Qmp.QemuTestBed;

namespace LiveMigration.HostNode.Tests.Hypervisor.Qmp;

/// <summary>
/// QEMU without root (issue 13): with <c>--qemu-user</c> the QMP adapter starts QEMU as that unprivileged account, which
/// reaches its VM's volumes through their group and nothing more; a volume it cannot reach is refused before QEMU starts,
/// naming the folder in the way. (Through <c>lsm local up</c>, every QMP cluster test runs QEMU this way.)
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class QemuAccountTests : IAsyncLifetime
{
    private readonly QemuTestBed _bed = new();
    private QemuAccount _account = null!;

    public async Task InitializeAsync() => _account = await EnsureAccountAsync();

    public async Task DisposeAsync() => await _bed.DisposeAsync();

    /// <summary>The account deploy/qemu-user.sh makes (the suite runs as root, as a hypervisor host does).</summary>
    public static async Task<QemuAccount> EnsureAccountAsync()
    {
        if ((await ProcessRunner.RunAsync("getent", ["passwd", QemuAccount.DefaultName])).ExitCode != 0)
            await ProcessRunner.RunAsync("useradd", ["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                "--shell", "/usr/sbin/nologin", QemuAccount.DefaultName]);
        return QemuAccount.Find(QemuAccount.DefaultName);
    }

    [Fact]
    public void A_host_without_a_qemu_account_keeps_the_pass_through_to_run_lsm_that_confined_qemus_need()
    {
        // Two hosts on one machine (two clusters, or test processes in parallel): one runs QEMU as the account, one as root.
        var confined = SocketFolders.StandIn($"/tmp/lsm-test-confined-{Guid.NewGuid():N}/host-1/run");
        var plain = SocketFolders.StandIn($"/tmp/lsm-test-plain-{Guid.NewGuid():N}/host-1/run");
        try
        {
            SocketDirectory.Ensure(confined, _account);
            SocketDirectory.Ensure(plain); // made 0700 before the fix, cutting the running QEMU off from its sockets
            var parent = File.GetUnixFileMode(SocketDirectory.SharedParent);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute, parent);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(plain));
        }
        finally
        {
            Directory.Delete(confined, recursive: true);
            Directory.Delete(plain, recursive: true);
        }
    }

    [Fact]
    public async Task A_vm_runs_as_the_unprivileged_account_with_only_its_group_and_reads_and_writes_its_chain()
    {
        var chain = await _bed.CreateChainAsync(layers: 3, capacity: 32 * MiB);
        // What the host's StorageModes does for a domain made with --qemu-user: the volumes and their folders belong to its group.
        foreach (var layer in chain.Layers)
        {
            await ProcessRunner.RunCheckedAsync("chgrp", [_account.Name, layer.Path, Path.GetDirectoryName(layer.Path)!], ErrorCodes.IoError);
            File.SetUnixFileMode(layer.Path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite);
        }
        var hypervisor = _bed.NewHypervisor(_account);

        var vm = await hypervisor.StartVmAsync(new VmSpec(VmId.New(), "confined", [chain]));
        _bed.Track(vm);

        var status = File.ReadAllLines($"/proc/{vm.Pid}/status").ToDictionary(l => l.Split(':')[0], l => l.Split(':', 2)[1].Trim());
        Assert.All(status["Uid"].Split('\t', StringSplitOptions.RemoveEmptyEntries), uid => Assert.Equal(_account.Uid.ToString(), uid));
        Assert.All(status["Gid"].Split('\t', StringSplitOptions.RemoveEmptyEntries), gid => Assert.Equal(_account.Gid.ToString(), gid));
        Assert.Equal("", status["Groups"]);
        Assert.Equal("0000000000000000", status["CapEff"]);
        // Its sockets' folder is its own and closed to everyone else.
        var drive = vm.Drive(chain.Image);
        var socketFolder = Path.GetDirectoryName(drive.GuestSocket)!;
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(socketFolder));
        Assert.Equal(_account.Uid.ToString(), (await ProcessRunner.RunCheckedAsync("stat", ["-c", "%u", socketFolder], ErrorCodes.IoError)).Trim());

        // The guest writes through QEMU into the leaf and reads the whole chain back (the base's 0x11 from the raw base).
        await GuestIo(drive, $"write -P 0x77 {4 * MiB} {MiB}");
        await GuestIo(drive, $"read -P 0x77 {4 * MiB} {MiB}");
        await GuestIo(drive, $"read -P 0x11 0 {MiB}");
        await hypervisor.StopVmAsync(vm.Id);
        await QemuIo(chain.Leaf, $"read -P 0x77 {4 * MiB} {MiB}");
    }

    [Fact]
    public async Task A_volume_behind_a_folder_the_account_cannot_pass_is_refused_before_qemu_starts_naming_the_folder()
    {
        var chain = await _bed.CreateChainAsync(layers: 2, capacity: 32 * MiB);
        var closed = Path.GetDirectoryName(chain.Leaf.Path)!;
        File.SetUnixFileMode(closed, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute); // root's alone
        var hypervisor = _bed.NewHypervisor(_account);
        var name = "closed-" + Guid.NewGuid().ToString("N")[..8];

        var refused = await Assert.ThrowsAsync<OperationFailedException>(() => hypervisor.StartVmAsync(new VmSpec(VmId.New(), name, [chain])));

        Assert.Equal(ErrorCodes.PermissionDenied, refused.Code);
        Assert.Contains(closed, refused.Message);
        Assert.Contains(_account.Name, refused.Message);
        Assert.Empty(await hypervisor.ListVmsAsync());
        Assert.DoesNotContain(Directory.EnumerateDirectories("/proc").Where(p => int.TryParse(Path.GetFileName(p), out _)), p =>
        {
            try { return File.ReadAllText(Path.Combine(p, "cmdline")).Contains("guest=" + name); }
            catch (IOException) { return false; }
        });
    }
}
