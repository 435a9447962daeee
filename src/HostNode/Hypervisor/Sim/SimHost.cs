using System.Threading.Channels;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor.Sim;

/// <summary>
/// The "running QEMUs" of one simulated host. It outlives the <see cref="SimHypervisor"/> instances
/// that drive it, as QEMU processes outlive a HostNode: a new instance on the same host adopts the
/// VMs and block jobs a previous one started. Tests kill a VM's QEMU here.
/// </summary>
public sealed class SimHost : IAsyncDisposable
{
    private readonly Channel<HypervisorEvent> _events = Channel.CreateUnbounded<HypervisorEvent>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Task _eventPump;
    private int _nextPid = 40000;

    public SimHost(string name = "sim-host")
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        Name = name;
        _eventPump = Task.Run(PumpEventsAsync);
    }

    public string Name { get; }

    /// <summary>Guards every VM, drive and job of this host.</summary>
    internal object Gate { get; } = new();
    internal Dictionary<VmId, SimVm> Vms { get; } = new();

    /// <summary>What the host's QEMUs emit, in order, delivered on one task and never under <see cref="Gate"/>.</summary>
    internal event Action<HypervisorEvent>? EventRaised;

    /// <summary>The VMs whose QEMU runs now.</summary>
    public IReadOnlyList<VmId> RunningVms
    {
        get { lock (Gate) return Vms.Values.Where(v => v.Running).Select(v => v.Id).ToList(); }
    }

    /// <summary>The VM's QEMU dies (SIGKILL, crash): its jobs vanish, <see cref="VmStopped"/> is raised, every later call on it fails with VM_NOT_RUNNING.</summary>
    public void KillVm(VmId vm, string reason = "QEMU was killed")
    {
        lock (Gate)
        {
            if (!Vms.TryGetValue(vm, out var v))
                throw new OperationFailedException(ErrorCodes.VmNotFound, $"VM {vm} never ran on sim host {Name}");
            StopLocked(v, reason);
        }
    }

    /// <summary>Ends every VM without events and waits for their jobs to stop.</summary>
    public async ValueTask DisposeAsync()
    {
        List<Task> loops;
        lock (Gate)
        {
            loops = Vms.Values.SelectMany(v => v.Drives).Select(d => d.Job?.Loop).OfType<Task>().ToList();
            foreach (var vm in Vms.Values)
            {
                vm.Running = false;
                foreach (var d in vm.Drives) d.StopJob();
            }
        }
        _events.Writer.TryComplete();
        await Task.WhenAll(loops.Append(_eventPump));
    }

    internal int NextPidLocked() => ++_nextPid;

    /// <summary>Queues an event; called under <see cref="Gate"/> so events keep the order of the changes they report.</summary>
    internal void RaiseLocked(HypervisorEvent e) => _events.Writer.TryWrite(e);

    internal void StopLocked(SimVm vm, string reason)
    {
        if (!vm.Running) return;
        vm.Running = false;
        vm.Pid = null;
        foreach (var d in vm.Drives) d.StopJob();
        RaiseLocked(new VmStopped(vm.Id, reason));
    }

    private async Task PumpEventsAsync()
    {
        await foreach (var e in _events.Reader.ReadAllAsync())
        {
            var handlers = EventRaised;
            if (handlers is null) continue;
            foreach (var handler in handlers.GetInvocationList().Cast<Action<HypervisorEvent>>())
            {
                // a faulty subscriber must not stop the simulated QEMUs' events for the others
                try { handler(e); }
                catch (Exception) { /* the subscriber's own bug; nothing the host can do about it */ }
            }
        }
    }
}

/// <summary>One simulated QEMU process and its drives. Mutated only under <see cref="SimHost.Gate"/>.</summary>
internal sealed class SimVm(VmId id, string name, int pid, int memoryMiB, List<SimDrive> drives)
{
    public VmId Id { get; } = id;
    public string Name { get; } = name;
    public int MemoryMiB { get; } = memoryMiB;
    public int? Pid { get; set; } = pid;
    public bool Running { get; set; } = true;
    public List<SimDrive> Drives { get; } = drives;

    public VmInfo ToInfo() => new(Id, Name, Pid, Running, Drives.Select(d => d.ToState()).ToList());
}

/// <summary>One drive: the chain its active node is made of, and its block job.</summary>
internal sealed class SimDrive(ImageId image, List<ChainLayer> layers)
{
    public ImageId Image { get; } = image;
    public List<ChainLayer> Layers { get; set; } = layers;
    public SimMirrorJob? Job { get; set; }
    /// <summary>The last job that ended, so a repeated call can tell what already happened.</summary>
    public BlockJobInfo? LastJob { get; set; }

    public DriveState ToState() => new(Image, Layers.Select(l => l.Path).ToList(), "", Image.ToString(), Job?.ToInfo(Image));

    public void StopJob()
    {
        Job?.Stop.Cancel();
        Job = null;
    }
}

/// <summary>A mirror job's counters. Mutated only under <see cref="SimHost.Gate"/>.</summary>
internal sealed class SimMirrorJob(string jobId, ChainLayer destination, CopyMode mode, long speed, long length)
{
    public string JobId { get; } = jobId;
    public ChainLayer Destination { get; } = destination;
    public CopyMode Mode { get; } = mode;
    public long InitialLength { get; } = length;
    public BlockJobPhase Phase { get; set; } = BlockJobPhase.Running;
    public long Offset { get; set; }
    public long Length { get; set; } = length;
    public long SpeedBytesPerSecond { get; set; } = speed;
    public CancellationTokenSource Stop { get; } = new();
    public Task? Loop { get; set; }

    public BlockJobInfo ToInfo(ImageId drive, string? error = null) =>
        new(JobId, drive, Phase, Offset, Length, SpeedBytesPerSecond, error, Mode);
}
