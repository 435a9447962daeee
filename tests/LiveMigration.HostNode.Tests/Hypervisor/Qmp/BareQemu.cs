using LiveMigration.HostNode.Hypervisor.Qmp;

namespace LiveMigration.HostNode.Tests.Hypervisor.Qmp;

/// <summary>A QEMU with no machine and no devices, only its QMP socket: for tests that speak QMP to it themselves.</summary>
public sealed class BareQemu : IAsyncDisposable
{
    private BareQemu(string socket, int pid) => (Socket, Pid) = (socket, pid);

    public string Socket { get; }
    public int Pid { get; }

    /// <summary>Starts it with its pid file and log under <paramref name="bed"/>'s root; the socket in a short folder of its own.</summary>
    public static async Task<BareQemu> StartAsync(QemuTestBed bed)
    {
        var socketDirectory = $"/tmp/lsm-c{Guid.NewGuid().ToString("N")[..8]}";
        Directory.CreateDirectory(socketDirectory);
        var socket = Path.Combine(socketDirectory, "q.sock");
        var pid = await QemuProcess.StartDaemonAsync("qemu-system-x86_64",
            ["-M", "none", "-nodefaults", "-display", "none", "-m", "16", "-qmp", $"unix:{socket},server=on,wait=off"],
            Path.Combine(bed.Root, "q.pid"), Path.Combine(bed.Root, "q.log"), null, CancellationToken.None);
        return new BareQemu(socket, pid);
    }

    public async ValueTask DisposeAsync()
    {
        await QemuTestBed.KillAsync(Pid);
        Directory.Delete(Path.GetDirectoryName(Socket)!, recursive: true);
    }
}

/// <summary>Tests that each get a <see cref="BareQemu"/> of their own, started before and killed after every test.</summary>
public abstract class BareQemuTests : IAsyncLifetime
{
    protected QemuTestBed Bed { get; } = new();
    protected BareQemu Qemu { get; private set; } = null!;

    public async Task InitializeAsync() => Qemu = await BareQemu.StartAsync(Bed);

    public async Task DisposeAsync()
    {
        await Qemu.DisposeAsync();
        await Bed.DisposeAsync();
    }
}
