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
    private readonly OperationLedger _ledger = new();
    /// <summary>
    /// Cancelled when this SPM stops (its singleton moves or its node leaves): a copy it started must not go on
    /// writing a destination volume while the SPM's new home copies the same volume again.
    /// </summary>
    private readonly CancellationTokenSource _stopped = new();
    private readonly ILoggingAdapter _log = Context.GetLogger();

    public SpmActor(StoragePool pool)
    {
        _pool = pool;
        Receive<ExecuteStep>(OnExecuteStep);
        Receive<SetStepSpeed>(s =>
            // The storage port's copies take no speed limit; the bandwidth that matters is the mirror's.
            _log.Debug("Ignoring speed {Speed} B/s for {Operation}: SPM copies run unthrottled", s.SpeedBytesPerSecond, s.Operation));
        Receive<StepProgressed>(OnProgress);
        Receive<StepFinished>(OnFinished);
        // The operator's storage changes (new domains, VM disks, snapshot volumes), each run off the actor.
        var system = Context.System;
        var storage = new SpmStorage(pool, attach =>
            DistributedPubSub.Get(system).Mediator.Tell(new Publish(ManagementTopics.Domains, attach)));
        Receive<GetSpmLocation>(_ => Sender.Tell(new SpmLocation(Cluster.Get(Context.System).SelfAddress.ToString())));
        Receive<IManagementMessage>(command => storage.HandleAsync(command, _stopped.Token).PipeTo(Sender));
    }

    public static Props Props(StoragePool pool) => Akka.Actor.Props.Create(() => new SpmActor(pool));

    protected override void PostStop() => _stopped.Cancel();

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

    /// <summary>The step's storage work, as DiskMover does it on one host. Runs off the actor: touches no actor state.</summary>
    private async Task<StepOutcome> RunAsync(ExecuteStep command, Progress progress)
    {
        var disk = command.Disk;
        var image = disk.Image;
        var src = _pool.Get(disk.Source);
        var dst = _pool.Get(disk.Destination);
        switch (command.Operation.Step)
        {
            case MigrationStep.CloneImageStructure:
            {
                var clone = await dst.CloneImageStructureAsync(src, image);
                return new StepOutcome(Detail: $"{clone.Volumes.Count} volumes cloned ILLEGAL on domain {dst.Id}");
            }
            case MigrationStep.SyncInternalVolumes:
            {
                // The leaf is the mirror's; the internal layers are read-only in QEMU, so they are copied here.
                var clone = await dst.DescribeImageAsync(image);
                var internals = clone.Volumes.Take(clone.Volumes.Count - 1).Select(v => v.Id).ToList();
                var copied = await CopyLayersAsync(src, dst, image, internals, progress, _stopped.Token);
                return new StepOutcome(copied, $"{internals.Count} internal volumes copied");
            }
            case MigrationStep.MarkDestinationLeafLegal:
            {
                var leaf = (await dst.DescribeImageAsync(image)).Leaf;
                await dst.MarkLegalAsync(image, leaf.Id);
                return new StepOutcome(Detail: $"leaf {leaf.Id} on domain {dst.Id} is LEGAL");
            }
            case MigrationStep.CreateVolumeCrossDomain:
            {
                var oldLeaf = (await src.DescribeImageAsync(image)).Leaf;
                var newLeaf = await dst.CreateVolumeAsync(new NewVolume(image, disk.NewLeaf, VolumeFormat.Cow, oldLeaf.Capacity,
                    new VolumeRef(src.Id, oldLeaf.Id), Legality.Legal), src);
                return new StepOutcome(Detail: $"leaf {newLeaf.Id} on domain {dst.Id} over {oldLeaf.Id} on domain {src.Id}");
            }
            case MigrationStep.CloneInternalVolumes:
            {
                var oldChain = await src.DescribeImageAsync(image);
                // Twins of the old chain under the new leaf, empty and ILLEGAL until copied and verified.
                await dst.CloneImageStructureAsync(src, image);
                var copied = await CopyLayersAsync(src, dst, image, oldChain.Volumes.Select(v => v.Id).ToList(), progress, _stopped.Token);
                // Metadata only: the running QEMU owns the leaf and rewrites its header in SwitchBackingChain.
                await dst.SetParentAsync(image, disk.NewLeaf, new VolumeRef(dst.Id, oldChain.Leaf.Id), null, rewriteHeader: false);
                return new StepOutcome(copied, $"{oldChain.Volumes.Count} volumes copied; leaf {disk.NewLeaf} now over {oldChain.Leaf.Id} on domain {dst.Id}");
            }
            case MigrationStep.DeleteSourceImage:
                await src.DeleteImageAsync(image);
                return new StepOutcome(Detail: $"image {image} deleted from domain {src.Id}");
            case MigrationStep.DeleteDestinationImage:
                await dst.DeleteImageAsync(image);
                return new StepOutcome(Detail: $"image {image} deleted from domain {dst.Id}");
            default:
                throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the SPM does not run {command.Operation.Step}");
        }
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
