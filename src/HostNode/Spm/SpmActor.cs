using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Event;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Spm;

/// <summary>
/// The Storage Pool Manager (DESIGN §2): the one place that changes pool metadata and copies data
/// between domains. Runs the SPM steps of the saga on the pool's domains, each as a task piped back,
/// so the actor keeps answering while a copy runs. A repeated operation id attaches to the running
/// work or gets the remembered answer; an id it never saw (a restart, a singleton that moved) is
/// simply done again, which the idempotent storage port turns into the same effect and answer.
/// </summary>
public sealed class SpmActor : ReceiveActor
{
    /// <summary>The name of the SPM cluster singleton (and of its proxy's target).</summary>
    public const string SingletonName = "spm";

    private readonly StoragePool _pool;
    /// <summary>The SPM lease, when the pool has one: its generation goes into every volume's owner, and each step checks it first.</summary>
    private readonly IStorageFence? _fence;
    private readonly OperationLedger _ledger = new();
    private readonly SpaceReservations _space = new();
    /// <summary>
    /// Cancelled when this SPM stops (its singleton moves or its node leaves): a copy it started must not go on
    /// writing a destination volume while the SPM's new home copies the same volume again.
    /// </summary>
    private readonly CancellationTokenSource _stopped = new();
    private readonly ILoggingAdapter _log = Context.GetLogger();

    /// <param name="fence">
    /// The SPM lease (DESIGN §7a), or null while the pool has none (generation 0). With a lease, give the pool
    /// <see cref="FencedStorageDomain"/>s over the same fence, so every change, not only each step's start, is fenced.
    /// </param>
    /// <param name="leasePath">Instead of <paramref name="fence"/>: the lease file whose lease this node's singleton manager
    /// acquired before starting this actor (<see cref="Leased"/>).</param>
    public SpmActor(StoragePool pool, IStorageFence? fence = null, string? leasePath = null)
    {
        fence ??= leasePath is null ? null : LeaseOfThisNode(leasePath);
        _pool = fence is null ? pool : pool.FencedBy(fence);
        _fence = fence;
        if (leasePath is not null)
            _log.Info("SPM started under the lease {Path}, generation {Generation}: every storage change is fenced by it", leasePath, fence!.Generation);
        Receive<ExecuteStep>(OnExecuteStep);
        Receive<SetStepSpeed>(s =>
            // The storage port's copies take no speed limit; the bandwidth that matters is the mirror's.
            _log.Debug("Ignoring speed {Speed} B/s for {Operation}: SPM copies run unthrottled", s.SpeedBytesPerSecond, s.Operation));
        Receive<StepProgressed>(OnProgress);
        Receive<StepFinished>(OnFinished);
        // The operator's storage changes (new domains, VM disks, snapshot volumes), each run off the actor.
        var system = Context.System;
        var storage = new SpmStorage(_pool, attach =>
            DistributedPubSub.Get(system).Mediator.Tell(new Publish(ManagementTopics.Domains, attach)));
        Receive<GetSpmLocation>(_ => Sender.Tell(new SpmLocation(Cluster.Get(Context.System).SelfAddress.ToString())));
        Receive<IManagementMessage>(command => storage.HandleAsync(command, _stopped.Token).PipeTo(Sender));
    }

    public static Props Props(StoragePool pool, IStorageFence? fence = null) => Akka.Actor.Props.Create(() => new SpmActor(pool, fence));

    /// <summary>
    /// The SPM as the lease-guarded singleton runs it: fenced by the lease (<paramref name="leasePath"/>) that its singleton
    /// manager acquired on this node before starting it (<c>use-lease</c>). Refuses to start when no such lease was made.
    /// </summary>
    public static Props Leased(StoragePool pool, string leasePath) => Akka.Actor.Props.Create(() => new SpmActor(pool, null, leasePath));

    private static PoolLease LeaseOfThisNode(string leasePath) =>
        FileLease.MadeIn(Context.System, leasePath) is { IsHeld: true } lease
            ? lease
            : throw new InvalidOperationException(
                $"the SPM singleton started without holding the lease {leasePath}: its singleton must use-lease {SpmLeaseSettings.ConfigPath}");

    protected override void PostStop()
    {
        _stopped.Cancel();
        // Stopped because the lease was lost (its singleton manager stops it at once): the steps in flight are refused
        // FENCED now, so the saga retries them at the SPM that holds the lease instead of waiting out its deadline.
        if (_fence is not { Generation: 0 }) return;
        _log.Warning("SPM stopped: the pool's lease is lost; {Count} steps in flight are refused FENCED", _ledger.Running.Count());
        foreach (var operation in _ledger.Running.ToList())
            Finish(operation, new OperationFailed(operation, ErrorCodes.Fenced,
                $"this SPM lost the pool's lease during {operation.Step}: it changes nothing more; the SPM that holds the lease runs it", Transient: true));
    }

    /// <summary>The steps this actor runs; the others belong to the HSM of the VM's host.</summary>
    public static bool Runs(MigrationStep step) => step is MigrationStep.CloneImageStructure or MigrationStep.SyncInternalVolumes
        or MigrationStep.MarkDestinationLeafLegal or MigrationStep.CreateVolumeCrossDomain or MigrationStep.CloneInternalVolumes
        or MigrationStep.DeleteSourceImage or MigrationStep.DeleteDestinationImage;

    private void OnExecuteStep(ExecuteStep command)
    {
        var operation = command.Operation;
        var sender = Sender;
        switch (_ledger.Admit(operation, sender, out var answer))
        {
            case OperationLedger.Admission.AlreadyAnswered:
                _log.Info("Answering repeated {Operation} with its remembered result", operation);
                sender.Tell(answer);
                return;
            case OperationLedger.Admission.Attached:
                _log.Info("Attaching {Sender} to running {Operation}", sender, operation);
                return;
        }

        if (!Runs(operation.Step) || operation.Image != command.Disk.Image)
        {
            Finish(operation, new OperationFailed(operation, ErrorCodes.InvalidArgument,
                $"the SPM does not run {operation.Step} for image {command.Disk.Image} (operation {operation})", Transient: false));
            return;
        }
        _log.Info("Starting {Operation} for image {Image} from domain {Source} to {Destination}",
            operation, command.Disk.Image, command.Disk.Source, command.Disk.Destination);
        var self = Self;
        var progress = new Progress(operation, self);
        StepReplies.RunAsync(operation, () => RunAsync(command, progress)).PipeTo(self);
    }

    private void OnProgress(StepProgressed p)
    {
        foreach (var waiter in _ledger.WaitersOf(p.Operation))
            waiter.Tell(new OperationProgress(p.Operation, p.Done, p.Total));
    }

    private void OnFinished(StepFinished finished)
    {
        StepReplies.Announce(finished, _log, Context.System.EventStream);
        Finish(finished.Operation, finished.Reply);
    }

    private void Finish(OperationId operation, IHostReply reply)
    {
        foreach (var waiter in _ledger.Finish(operation, reply)) waiter.Tell(reply);
    }

    /// <summary>
    /// The step's storage work, as DiskMover does it on one host. Runs off the actor: touches no actor state.
    /// Whether a step already happened, and whether it may happen, is read from the domains' metadata (the
    /// volumes' owner, legality, parents), never from the ledger (DESIGN §7 invariant 7): the ledger only
    /// saves redoing work, a forgotten or stale operation id meets the same checks as a new one.
    /// </summary>
    private async Task<StepOutcome> RunAsync(ExecuteStep command, Progress progress)
    {
        var disk = command.Disk;
        var image = disk.Image;
        var migration = command.Operation.Migration;
        var ct = _stopped.Token;
        if (_fence is not null) await _fence.CheckAsync(ct);
        // Without an SPM lease (DESIGN §7a) there is no fencing generation to carry.
        var owner = new VolumeOwner(migration, _fence?.Generation ?? VolumeOwner.Unfenced);
        var src = _pool.Get(disk.Source);
        var dst = _pool.Get(disk.Destination);
        if (ReadsTheSource(command.Operation.Step) && !(await src.ListImagesAsync(ct)).Contains(image))
        {
            // A repeat after the source was retired: only the destination can say whether this step's effect is there.
            await SourceRetirement.RequireCompleteCopyAsync(src, dst, image, migration, ct);
            return new StepOutcome(Detail: $"already done: image {image} is gone from domain {src.Id} and domain {dst.Id} holds " +
                                           $"the complete LEGAL copy migration {migration} made");
        }
        if (MakesTheCopy(command.Operation.Step) && await dst.HasMigrationEndedAsync(migration, ct))
            throw new OperationFailedException(ErrorCodes.MigrationEnded,
                $"migration {migration} ended on domain {dst.Id} with its copy undone: this late {command.Operation.Step} changes nothing");
        switch (command.Operation.Step)
        {
            case MigrationStep.CloneImageStructure:
            {
                await ReserveRoomAsync(src, dst, image, migration, headroom: 0, ct);
                var clone = await dst.CloneImageStructureAsync(src, image, owner, ct);
                return new StepOutcome(Detail: $"{clone.Volumes.Count} volumes cloned ILLEGAL on domain {dst.Id}");
            }
            case MigrationStep.SyncInternalVolumes:
            {
                // The leaf is the mirror's; the internal layers are read-only in QEMU, so they are copied here.
                var sourceChain = await src.DescribeImageAsync(image, ct);
                var clone = await dst.DescribeImageAsync(image, ct);
                RequireOwnedBy(clone.Volumes, migration, dst, image);
                var internals = sourceChain.Volumes.Where(v => v.Id != sourceChain.Leaf.Id).Select(v => v.Id).ToList();
                var copied = await CopyLayersAsync(src, dst, image, internals, progress, ct);
                return new StepOutcome(copied, $"{internals.Count} internal volumes copied");
            }
            case MigrationStep.MarkDestinationLeafLegal:
            {
                // The plan names the leaf (the twin of the source leaf the mirror wrote); older journals fall back to the clone's leaf.
                var leaf = disk.SourceLeaf is { } named
                    ? await dst.DescribeVolumeAsync(image, named, ct)
                    : (await dst.DescribeImageAsync(image, ct)).Leaf;
                RequireOwnedBy([leaf], migration, dst, image);
                await dst.MarkLegalAsync(image, leaf.Id, ct);
                _space.Release(migration, image); // the mirror is done and pivoted: the domain's own figures count it now
                return new StepOutcome(Detail: $"leaf {leaf.Id} on domain {dst.Id} is LEGAL");
            }
            case MigrationStep.CreateVolumeCrossDomain:
            {
                if ((await dst.ListImagesAsync(ct)).Contains(image)
                    && (await dst.DescribeImageAsync(image, ct)).Volumes.FirstOrDefault(v => v.Id == disk.NewLeaf) is { } made)
                {
                    // Made already; CloneInternalVolumes may have re-pointed it since, so its parent is not compared.
                    RequireOwnedBy([made], migration, dst, image);
                    return new StepOutcome(Detail: $"leaf {made.Id} on domain {dst.Id} was made already, over {made.Parent}");
                }
                // The last step before the live snapshot moves the guest's writes: room for the chain's copy, and for
                // the guest's writes on the new leaf meanwhile, is checked fresh and promised now.
                await ReserveRoomAsync(src, dst, image, migration, PostCopyHeadroomBytes, ct);
                var oldLeaf = (await src.DescribeImageAsync(image, ct)).Leaf;
                var newLeaf = await dst.CreateVolumeAsync(new NewVolume(image, disk.NewLeaf, VolumeFormat.Cow, oldLeaf.Capacity,
                    new VolumeRef(src.Id, oldLeaf.Id), Legality.Legal, owner), src, ct);
                return new StepOutcome(Detail: $"leaf {newLeaf.Id} on domain {dst.Id} over {oldLeaf.Id} on domain {src.Id}");
            }
            case MigrationStep.CloneInternalVolumes:
            {
                var oldChain = await src.DescribeImageAsync(image, ct);
                // Twins of the old chain under the new leaf, empty and ILLEGAL until copied and verified.
                await dst.CloneImageStructureAsync(src, image, owner, ct);
                var copied = await CopyLayersAsync(src, dst, image, oldChain.Volumes.Select(v => v.Id).ToList(), progress, ct);
                RequireOwnedBy([await dst.DescribeVolumeAsync(image, disk.NewLeaf, ct)], migration, dst, image);
                // Metadata only: the running QEMU owns the leaf and rewrites its header in SwitchBackingChain.
                await dst.SetParentAsync(image, disk.NewLeaf, new VolumeRef(dst.Id, oldChain.Leaf.Id), null, rewriteHeader: false, ct);
                _space.Release(migration, image); // copied: the domain's own figures count it now
                return new StepOutcome(copied, $"{oldChain.Volumes.Count} volumes copied; leaf {disk.NewLeaf} now over {oldChain.Leaf.Id} on domain {dst.Id}");
            }
            case MigrationStep.DeleteSourceImage:
            {
                _space.Release(migration, image);
                return new StepOutcome(Detail: await SourceRetirement.DeleteSourceImageAsync(src, dst, image, migration, ct));
            }
            case MigrationStep.DeleteDestinationImage:
            {
                _space.Release(migration, image);
                // The mark first, so no late command of this migration makes its volumes again; a full domain that
                // cannot take the mark gets it right after the delete freed room.
                var marked = true;
                try
                {
                    await dst.MarkMigrationEndedAsync(migration, ct);
                }
                catch (OperationFailedException e) when (e.Code == ErrorCodes.IoError)
                {
                    marked = false;
                }
                var removed = await dst.DeleteOwnedVolumesAsync(image, owner, ct);
                if (!marked) await dst.MarkMigrationEndedAsync(migration, ct);
                return new StepOutcome(Detail: $"{removed.Count} volumes of image {image} that migration {migration} made deleted from domain {dst.Id}");
            }
            default:
                throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the SPM does not run {command.Operation.Step}");
        }
    }

    /// <summary>Room a post-copy keeps on its destination for the guest's writes on the new leaf while the chain is copied.</summary>
    public const long PostCopyHeadroomBytes = 64L << 20;

    /// <summary>What the disk's copy takes on the destination (the source chain's allocated bytes, and the headroom), checked fresh and promised.</summary>
    private async Task ReserveRoomAsync(IStorageDomain src, IStorageDomain dst, ImageId image, MigrationId migration, long headroom, CancellationToken ct)
    {
        var needed = (await src.DescribeImageAsync(image, ct)).Volumes.Sum(v => v.AllocatedBytes) + headroom;
        _space.Reserve(await dst.DescribeAsync(ct), migration, image, needed, DateTimeOffset.UtcNow);
    }

    /// <summary>The steps that make or fill the destination copy: refused once the migration's rollback undid it there.</summary>
    private static bool MakesTheCopy(MigrationStep step) => step is MigrationStep.CloneImageStructure or MigrationStep.SyncInternalVolumes
        or MigrationStep.MarkDestinationLeafLegal or MigrationStep.CreateVolumeCrossDomain or MigrationStep.CloneInternalVolumes;

    private static bool ReadsTheSource(MigrationStep step) => step is MigrationStep.CloneImageStructure
        or MigrationStep.SyncInternalVolumes or MigrationStep.CreateVolumeCrossDomain or MigrationStep.CloneInternalVolumes;

    /// <summary>A step works only on volumes its migration made: a stale command meeting another migration's volumes changes nothing.</summary>
    private static void RequireOwnedBy(IEnumerable<VolumeInfo> volumes, MigrationId migration, IStorageDomain domain, ImageId image)
    {
        if (volumes.FirstOrDefault(v => v.Owner?.Migration != migration) is { } foreign)
            throw new OperationFailedException(ErrorCodes.DestinationHoldsImage,
                $"volume {foreign.Id} of image {image} on domain {domain.Id} was made by {foreign.Owner?.ToString() ?? "nobody (an operator)"}, " +
                $"not by migration {migration}: this step does not touch it");
    }

    /// <summary>Copies the layers one after the other, reporting the bytes of all of them as one total.</summary>
    private static async Task<long> CopyLayersAsync(IStorageDomain src, IStorageDomain dst, ImageId image,
        IReadOnlyList<VolumeId> layers, Progress progress, CancellationToken ct)
    {
        long total = 0;
        foreach (var id in layers) total += (await src.DescribeVolumeAsync(image, id, ct)).AllocatedBytes;
        long done = 0;
        progress.Report(0, total);
        foreach (var id in layers)
        {
            var before = done;
            var copied = await dst.CopyVolumeDataAsync(src, image, id,
                new ProgressSink(p => progress.Report(before + p.Done, Math.Max(total, before + p.Total))), ct);
            done += copied.AllocatedBytes;
            progress.Report(done, Math.Max(total, done));
        }
        return done;
    }

    /// <summary>Forwards a copy's progress to the actor as a message (the callback runs on the copy's thread).</summary>
    private sealed class Progress(OperationId operation, IActorRef self)
    {
        public void Report(long done, long total) => self.Tell(new StepProgressed(operation, done, total));
    }

    /// <summary>Calls back inline: <see cref="Progress{T}"/> would post to a captured context that an actor task does not have.</summary>
    private sealed class ProgressSink(Action<CopyProgress> report) : IProgress<CopyProgress>
    {
        public void Report(CopyProgress value) => report(value);
    }
}
