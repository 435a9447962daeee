using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using static LiveMigration.Shared.Migration.MigrationStep;

namespace LiveMigration.Coordinator.Tests.Simulation;

/// <summary>Which of the disk's two domains a volume is on.</summary>
public enum Side { Src, Dst }

/// <summary>One volume of a disk: a layer (b0, b1… internal, "leaf" the original leaf, "new" the post-copy leaf) on one side.</summary>
public readonly record struct VolKey(Side Side, string Layer)
{
    public override string ToString() => $"{Side}:{Layer}";
}

/// <summary>
/// A volume's metadata and data, abstracted: LEGAL or not, and the version of its layer's data it holds
/// (<see cref="Content"/>; the guest's writes bump the layer's version, a copy takes its source's).
/// </summary>
public sealed class SimVol
{
    public bool Legal;
    public long Content;
    /// <summary>Only for the post-copy "new" leaf: which side its parent (the old leaf) is on, as its metadata says.</summary>
    public Side? ParentSide;
    public override string ToString() => $"{(Legal ? "LEGAL" : "ILLEGAL")}@{Content}{(ParentSide is { } p ? $"^{p}" : "")}";
}

/// <summary>One disk of the VM: its volumes on both domains, the chain QEMU has open, the mirror, and what the guest wrote.</summary>
public sealed class SimDisk(DiskPlan plan, int internals)
{
    public const string Leaf = "leaf";
    public const string New = "new";

    public DiskPlan Plan { get; } = plan;
    /// <summary>The destination domain's durable mark that this migration's copy there was undone (its rollback's delete).</summary>
    public bool DestinationEnded { get; set; }
    /// <summary>The SPM's mark that the disk's chain is the copy now (StorageSteps: written by the first storage step after the switch).</summary>
    public bool DestinationKept { get; set; }
    public ImageId Image => Plan.Image;
    public int Internals { get; } = internals;
    public Dictionary<VolKey, SimVol> Volumes { get; } = new();
    /// <summary>The chain the drive has open, base → top (DESIGN §7.1: the truth); the VM writes on its top.</summary>
    public List<VolKey> Open { get; set; } = [];
    public bool MirrorRunning;
    public bool MirrorReady;
    /// <summary>QEMU remembers the last job: a pivot repeated after a lost answer finds it completed.</summary>
    public bool LastJobCompleted;
    /// <summary>The host's durable VM record for this drive (DESIGN §7.1): the leaf it names, and a switch begun and not yet recorded.</summary>
    public VolKey RecordLeaf;
    public VolKey? Pending;
    /// <summary>The record's fence (DriveRecords.FenceSwitchAsync): a probe answered this migration's switch never took effect.</summary>
    public bool SwitchFenced;
    /// <summary>A pivot whose block-job-complete was issued but whose job has not ended (the HSM answered TIMEOUT): it may still land.</summary>
    public bool PivotPending;

    /// <summary>The newest data version of each layer the guest wrote (or that existed at the start).</summary>
    public Dictionary<string, long> Written { get; } = new();

    public IEnumerable<string> OriginalLayers => Enumerable.Range(0, Internals).Select(i => $"b{i}").Append(Leaf);

    public bool Has(Side side, string layer) => Volumes.ContainsKey(new VolKey(side, layer));
    public SimVol? Get(Side side, string layer) => Volumes.GetValueOrDefault(new VolKey(side, layer));

    /// <summary>The image's volumes on one side, base → leaf (the "new" leaf last), as DescribeImage lists them.</summary>
    public List<string> LayersOn(Side side) =>
        OriginalLayers.Append(New).Where(l => Has(side, l)).ToList();

    public override string ToString() =>
        $"open=[{string.Join(",", Open)}] vols={{{string.Join(" ", Volumes.OrderBy(v => v.Key.Side).ThenBy(v => v.Key.Layer).Select(v => $"{v.Key}={v.Value}"))}}} " +
        $"mirror={(MirrorRunning ? MirrorReady ? "READY" : "running" : LastJobCompleted ? "completed" : "none")} " +
        $"written={{{string.Join(",", Written.Select(w => $"{w.Key}:{w.Value}"))}}}";
}

/// <summary>A host's error, as the ports throw it: the code decides, only TIMEOUT and IO_ERROR are transient (StepReplies).</summary>
public sealed class HostError(string code, string message) : Exception(message)
{
    public string Code { get; } = code;
    public bool Transient => Code is ErrorCodes.Timeout or ErrorCodes.IoError or ErrorCodes.VolumeInUse;
}

/// <summary>What a host answers a step with, or that the answer comes later (a mirror wait).</summary>
public abstract record HostAnswer
{
    public sealed record Ok(StepOutcome Outcome) : HostAnswer;
    public sealed record Fail(string Code, string Message, bool Transient) : HostAnswer;
    public sealed record Pending : HostAnswer;
}

/// <summary>
/// The world the saga drives: one VM with its disks on a source and a destination domain. Each step is executed
/// the way SpmActor/HsmActor with the sim ports (SimStorageDomain, SimHypervisor) do it, including what a repeated,
/// late or out-of-order command does. Every mutation that could lose data reports to <see cref="Violate"/>.
/// </summary>
public sealed class SimWorld
{
    public bool VmRunning { get; private set; } = true;
    public Dictionary<ImageId, SimDisk> Disks { get; } = new();
    /// <summary>(invariant, detail): called when the world sees data harmed.</summary>
    public Action<string, string> Violate { get; set; } = (_, _) => { };
    /// <summary>Called when a mirror starts, so the scheduler can make it READY later.</summary>
    public Action<SimDisk> MirrorStarted { get; set; } = _ => { };

    public SimDisk AddDisk(DiskPlan plan, int internals)
    {
        var disk = new SimDisk(plan, internals);
        foreach (var layer in disk.OriginalLayers)
        {
            disk.Volumes[new VolKey(Side.Src, layer)] = new SimVol { Legal = true, Content = 1 };
            disk.Written[layer] = 1;
            disk.Open.Add(new VolKey(Side.Src, layer));
        }
        disk.Written[SimDisk.New] = 0;
        disk.RecordLeaf = new VolKey(Side.Src, SimDisk.Leaf);
        Disks[plan.Image] = disk;
        return disk;
    }

    /// <summary>The guest writes on the top of the chain its drive has open.</summary>
    public void GuestWrite(SimDisk disk)
    {
        if (!VmRunning) return;
        var top = disk.Open[^1];
        var version = ++disk.Written[top.Layer];
        if (disk.Volumes.TryGetValue(top, out var vol))
            vol.Content = version;
        else
            Violate("lost-write", $"disk {disk.Image}: the guest wrote version {version} of {top.Layer} on {top}, which no longer exists");
    }

    /// <summary>QEMU dies: its block jobs with it; each drive's record keeps the chain it had open.</summary>
    public void KillVm()
    {
        VmRunning = false;
        foreach (var d in Disks.Values) { d.MirrorRunning = false; d.MirrorReady = false; d.PivotPending = false; }
    }

    public void MirrorBecomesReady(SimDisk disk)
    {
        if (VmRunning && disk.MirrorRunning) disk.MirrorReady = true;
    }

    /// <summary>The mirror fails (e.g. out of space on the destination): the job is gone.</summary>
    public void MirrorFails(SimDisk disk)
    {
        disk.PivotPending = false;
        disk.MirrorRunning = false;
        disk.MirrorReady = false;
        disk.LastJobCompleted = false;
    }

    // ---- the steps, one handler each (add a new step here) ----------------------------------------

    public delegate HostAnswer StepHandler(SimWorld world, SimDisk disk);

    /// <summary>Each step's effect, as the SPM (SpmActor + SimStorageDomain) or the HSM (HsmActor + SimHypervisor) runs it.</summary>
    public static readonly IReadOnlyDictionary<MigrationStep, StepHandler> Handlers = new Dictionary<MigrationStep, StepHandler>
    {
        // ---- SPM ----
        [CloneImageStructure] = (w, d) => { w.CloneStructure(d); return Done("structure cloned ILLEGAL"); },
        [SyncInternalVolumes] = (w, d) =>
        {
            var layers = w.RequireImage(d, Side.Dst);
            foreach (var layer in layers.Take(layers.Count - 1)) w.CopyVolume(d, layer);
            return Done($"{layers.Count - 1} internal volumes copied");
        },
        [MarkDestinationLeafLegal] = (w, d) =>
        {
            var layers = w.RequireImage(d, Side.Dst);
            d.Get(Side.Dst, layers[^1])!.Legal = true;
            return Done($"{layers[^1]} LEGAL");
        },
        [CreateVolumeCrossDomain] = (w, d) =>
        {
            w.RequireImage(d, Side.Src);
            if (!d.Has(Side.Src, SimDisk.Leaf)) throw new HostError(ErrorCodes.VolumeNotFound, "old leaf gone");
            if (d.Get(Side.Dst, SimDisk.New) is { } existing)
                return existing.ParentSide == Side.Src
                    ? Done("new leaf exists already")
                    : throw new HostError(ErrorCodes.Conflict, "new leaf exists with another parent");
            d.Volumes[new VolKey(Side.Dst, SimDisk.New)] = new SimVol { Legal = true, Content = d.Written[SimDisk.New], ParentSide = Side.Src };
            return Done("new leaf created over the source leaf");
        },
        [CloneInternalVolumes] = (w, d) =>
        {
            w.CloneStructure(d);
            foreach (var layer in d.OriginalLayers) w.CopyVolume(d, layer);
            var leaf = d.Get(Side.Dst, SimDisk.New) ?? throw new HostError(d.LayersOn(Side.Dst).Count == 0 ? ErrorCodes.ImageNotFound : ErrorCodes.VolumeNotFound, "new leaf not on destination");
            if (leaf.ParentSide != Side.Dst)
            {
                if (d.Get(Side.Dst, SimDisk.Leaf) is not { Legal: true }) throw new HostError(ErrorCodes.Conflict, "copy of the old leaf is ILLEGAL");
                leaf.ParentSide = Side.Dst;
            }
            return Done("chain copied; new leaf re-pointed at the copy");
        },
        [DeleteSourceImage] = (w, d) => { w.DeleteImage(d, Side.Src, DeleteSourceImage); return Done("source deleted"); },
        [DeleteDestinationImage] = (w, d) =>
        {
            if (d.DestinationKept) throw new HostError(ErrorCodes.Conflict, "the copy is the disk's chain now: a late rollback deletes nothing");
            d.DestinationEnded = true; // the SPM marks the domain first (and keeps the mark when a volume in use refuses the delete)
            w.DeleteImage(d, Side.Dst, DeleteDestinationImage);
            return Done("destination deleted");
        },

        // ---- HSM ----
        [StartReplication] = (w, d) =>
        {
            w.RequireVm();
            var layers = w.RequireImage(d, Side.Dst);
            var target = new VolKey(Side.Dst, layers[^1]);
            if (d.MirrorRunning) return Done("mirror runs already");
            if (d.LastJobCompleted && d.Open[^1] == target) return Done("mirror completed already (pivoted)");
            if (d.Open[^1] == target) throw new HostError(ErrorCodes.InvalidArgument, "the destination is the source leaf");
            d.MirrorRunning = true;
            d.MirrorReady = false;
            d.LastJobCompleted = false;
            w.MirrorStarted(d);
            return Done($"mirror into {target}");
        },
        [WaitMirrorReady] = (w, d) =>
        {
            w.RequireVm();
            if (!d.MirrorRunning) throw new HostError(ErrorCodes.NoSuchJob, "no mirror to wait for");
            return d.MirrorReady ? Done("mirror READY") : new HostAnswer.Pending();
        },
        [Pivot] = (w, d) =>
        {
            var destination = w.ResolveDestinationChain(d);
            if (d.SwitchFenced) throw new HostError(ErrorCodes.MigrationEnded, "a probe answered this switch never took effect");
            // HsmActor: the intent is recorded durably before QEMU is asked (BeginSwitchAsync)
            w.BeginSwitch(d, destination[^1]);
            if (!d.MirrorRunning && d.LastJobCompleted && d.Open.SequenceEqual(destination)) return w.Recorded(d, "pivoted already");
            if (!d.MirrorRunning) throw w.SettledSwitch(d, new HostError(ErrorCodes.NoSuchJob, "no mirror to pivot"));
            if (!d.MirrorReady) throw new HostError(ErrorCodes.NoSuchJob, "mirror not READY");
            w.CompletePivot(d);
            return w.Recorded(d, "pivoted onto the destination");
        },
        [CancelReplication] = (w, d) =>
        {
            w.RequireVm();
            if (!d.MirrorRunning) return Done("no mirror: nothing to cancel");
            d.PivotPending = false;
            d.MirrorRunning = false;
            d.MirrorReady = false;
            d.LastJobCompleted = false;
            return Done("mirror cancelled");
        },
        [LiveSnapshotToDestination] = (w, d) =>
        {
            var leaf = d.Get(Side.Dst, SimDisk.New) ?? throw new HostError(d.LayersOn(Side.Dst).Count == 0 ? ErrorCodes.ImageNotFound : ErrorCodes.VolumeNotFound, "new leaf not on destination");
            var target = new VolKey(Side.Dst, SimDisk.New);
            if (d.SwitchFenced) throw new HostError(ErrorCodes.MigrationEnded, "a probe answered this switch never took effect");
            w.BeginSwitch(d, target);
            if (d.Open[^1] == target) return w.Recorded(d, "snapshot taken already");
            if (leaf.ParentSide != Side.Src || d.Open[^1] != new VolKey(Side.Src, SimDisk.Leaf))
                throw w.SettledSwitch(d, new HostError(ErrorCodes.InvalidArgument, "the new leaf's parent is not the current leaf"));
            if (d.MirrorRunning) throw new HostError(ErrorCodes.Conflict, "a block job runs");
            d.Open.Add(target);
            d.LastJobCompleted = false;
            return w.Recorded(d, "VM writes on the new leaf");
        },
        [SwitchBackingChain] = (w, d) =>
        {
            w.RequireVm();
            var leaf = d.Get(Side.Dst, SimDisk.New) ?? throw new HostError(d.LayersOn(Side.Dst).Count == 0 ? ErrorCodes.ImageNotFound : ErrorCodes.VolumeNotFound, "new leaf not on destination");
            if (leaf.ParentSide != Side.Dst) throw new HostError(ErrorCodes.Conflict, "internal volumes not cloned yet");
            var copy = d.OriginalLayers.Select(l => new VolKey(Side.Dst, l)).ToList();
            foreach (var k in copy)
                if (!d.Volumes.ContainsKey(k)) throw new HostError(ErrorCodes.VolumeNotFound, $"{k} missing");
            var wanted = copy.Append(new VolKey(Side.Dst, SimDisk.New)).ToList();
            if (d.Open.SequenceEqual(wanted)) return Done("switched already");
            if (!d.Open.Take(d.Open.Count - 1).Select(k => k.Layer).SequenceEqual(copy.Select(k => k.Layer)))
                throw new HostError(ErrorCodes.InvalidArgument, "the new backing is not a copy of the current one");
            if (copy.Any(k => !d.Volumes[k].Legal)) throw new HostError(ErrorCodes.Conflict, "a copied layer is ILLEGAL");
            if (d.MirrorRunning) throw new HostError(ErrorCodes.Conflict, "a block job runs");
            d.Open = [.. copy, d.Open[^1]];
            d.RecordLeaf = d.Open[^1];
            d.Pending = null;
            return Done("VM runs on the destination only");
        },
        // DriveSteps.ProbeSwitchAsync: read-only but for the record; QEMU's open chain when it runs, the record when not.
        [ProbeSwitch] = (w, d) =>
        {
            var preCopy = w.PreCopy;
            var target = preCopy ? new VolKey(Side.Dst, SimDisk.Leaf) : new VolKey(Side.Dst, SimDisk.New);
            // As the HSM: the leaf by its planned id; it may be gone (a probe before a paused rollback goes on).
            // As the HSM: a begun pivot whose mirror has not ended is let end before the drive is read.
            if (w.VmRunning && d.PivotPending && d.Pending is not null) w.CompletePivot(d);
            if (w.VmRunning)
            {
                if (d.Open[^1] == target)
                {
                    d.RecordLeaf = target;
                    d.Pending = null;
                    return Found(SwitchFinding.OnDestination, "QEMU runs on the destination leaf");
                }
                d.Pending = null;
                return Fenced(w, d, $"QEMU runs on {d.Open[^1]}");
            }
            if (d.RecordLeaf == target) return Found(SwitchFinding.OnDestination, "the record names the destination leaf");
            if (d.Pending is null) return Fenced(w, d, "the record shows no switch begun");
            if (d.DestinationEnded && !d.Volumes.ContainsKey(target))
            {
                d.Pending = null;
                return Fenced(w, d, "the rollback's delete began (its mark): only the source chain remains");
            }
            if (!preCopy)
            {
                d.RecordLeaf = target;
                d.Pending = null;
                // the VM starts again on its record: the new leaf, an overlay of the chain it had open
                if (d.Open[^1] != target) d.Open = [.. d.Open, target];
                return Found(SwitchFinding.OnDestination, "QEMU died during the live snapshot: the new leaf holds every write either way");
            }
            // file domains: qemu-img compare of the two leaves
            var source = d.Get(Side.Src, SimDisk.Leaf);
            if (source is not null && source.Content == d.Get(Side.Dst, SimDisk.Leaf)!.Content)
            {
                d.Pending = null;
                // the VM starts again on the recorded (source) chain, which holds the same data
                d.Open = d.OriginalLayers.Select(l => new VolKey(Side.Src, l)).ToList();
                return Fenced(w, d, "QEMU died during the pivot; both leaves hold the same data");
            }
            throw new HostError(ErrorCodes.SwitchOutcomeUnknown, "QEMU died during the pivot and the leaves differ: both are kept");
        },
    };

    public static bool RunsOnHsm(MigrationStep step) => step is StartReplication or WaitMirrorReady or Pivot or CancelReplication
        or LiveSnapshotToDestination or SwitchBackingChain or ProbeSwitch;

    /// <summary>Runs one step now; a port error becomes a typed failure as StepReplies does.</summary>
    public HostAnswer Execute(MigrationStep step, SimDisk disk)
    {
        try
        {
            // As StorageSteps: the first storage step after the switch (sent only past the point of no return) takes back
            // a mark that a delete which deleted nothing (the VM on the copy) left, and marks the copy kept.
            if (step is MarkDestinationLeafLegal or CloneInternalVolumes)
            {
                if (disk.DestinationEnded && disk.Volumes.ContainsKey(new VolKey(Side.Dst, PreCopy ? SimDisk.Leaf : SimDisk.New)))
                    disk.DestinationEnded = false;
                if (!disk.DestinationEnded) disk.DestinationKept = true;
            }
            // As the SPM: a late command of a migration whose copy was undone on the destination finds the mark.
            if (disk.DestinationEnded && step is CloneImageStructure or SyncInternalVolumes or MarkDestinationLeafLegal
                    or CreateVolumeCrossDomain or CloneInternalVolumes
                    or StartReplication or Pivot or LiveSnapshotToDestination or SwitchBackingChain)
                return new HostAnswer.Fail(ErrorCodes.MigrationEnded, "the migration's copy was undone here", false);
            return Handlers.TryGetValue(step, out var handler)
                ? handler(this, disk)
                : new HostAnswer.Fail(ErrorCodes.InvalidArgument, $"no host runs {step}", false);
        }
        catch (HostError e)
        {
            return new HostAnswer.Fail(e.Code, e.Message, e.Transient);
        }
    }

    private static HostAnswer Done(string detail) => new HostAnswer.Ok(new StepOutcome(Detail: detail));
    private static HostAnswer Found(SwitchFinding finding, string detail) => new HostAnswer.Ok(new StepOutcome(Detail: detail, Switch: finding));

    /// <summary>As DriveSteps: the probe's "never took effect" is fenced in the record before it answers.</summary>
    private static HostAnswer Fenced(SimWorld w, SimDisk d, string detail)
    {
        if (w.FencesSwitches) d.SwitchFenced = true;
        return Found(SwitchFinding.OnSource, detail);
    }

    /// <summary>The migration's strategy (the probe's target depends on it, as the HSM reads it from the command).</summary>
    public bool PreCopy { get; set; } = true;

    /// <summary>
    /// Whether the HSM fences a switch its probe answered never took effect (DriveRecords.FenceSwitchAsync), as it does.
    /// Off, a late copy of that switch may still land (a record lost, or written before the fence): the saga's own
    /// defences (a probe before undoing after a pause, a probe on a delete that finds the copy in use) are then what holds.
    /// </summary>
    public bool FencesSwitches { get; set; } = true;

    /// <summary>
    /// DriveRecords.BeginSwitchAsync: a QEMU already gone is never asked to switch (VM_NOT_RUNNING before any intent is
    /// written); the intent is written unless the record names the target already (CatalogedVm.WithPending: a late
    /// copy of a switch that took effect leaves nothing in doubt).
    /// </summary>
    private void BeginSwitch(SimDisk d, VolKey target)
    {
        RequireVm();
        d.Pending = d.RecordLeaf == target ? null : target;
    }

    /// <summary>
    /// DriveRecords.SettlingOnFailureAsync: QEMU refused the switch and runs with no block job on the drive, so nothing can
    /// land: the record names what QEMU runs, no switch pending. (A job still running keeps the intent for the probe.)
    /// </summary>
    private HostError SettledSwitch(SimDisk d, HostError refusal)
    {
        if (VmRunning && !d.MirrorRunning)
        {
            d.RecordLeaf = d.Open[^1];
            d.Pending = null;
        }
        return refusal;
    }

    /// <summary>A switch that worked is recorded before the HSM answers (RecordLeafAsync).</summary>
    private HostAnswer Recorded(SimDisk d, string detail)
    {
        d.RecordLeaf = d.Open[^1];
        d.Pending = null;
        return Done(detail);
    }

    /// <summary>block-job-complete lands: the mirror's last sync, then QEMU writes on the destination chain.</summary>
    public void CompletePivot(SimDisk d)
    {
        d.Get(Side.Dst, SimDisk.Leaf)!.Content = d.Volumes.TryGetValue(d.Open[^1], out var src) ? src.Content : 0;
        d.MirrorRunning = false;
        d.MirrorReady = false;
        d.LastJobCompleted = true;
        d.PivotPending = false;
        d.Open = d.OriginalLayers.Select(l => new VolKey(Side.Dst, l)).ToList();
        // The HSM hears BLOCK_JOB_COMPLETED and records the leaf the drive runs on now.
        if (VmRunning)
        {
            d.RecordLeaf = d.Open[^1];
            d.Pending = null;
        }
    }

    private void RequireVm()
    {
        if (!VmRunning) throw new HostError(ErrorCodes.VmNotRunning, "QEMU is gone");
    }

    private List<string> RequireImage(SimDisk d, Side side)
    {
        var layers = d.LayersOn(side);
        return layers.Count > 0 ? layers : throw new HostError(ErrorCodes.ImageNotFound, $"image {d.Image} not on {side}");
    }

    /// <summary>SimStorageDomain.CloneImageStructureAsync: the source's volumes recreated on the destination, empty and ILLEGAL; twins kept.</summary>
    private void CloneStructure(SimDisk d)
    {
        foreach (var layer in RequireImage(d, Side.Src).Where(l => l != SimDisk.New))
            if (!d.Has(Side.Dst, layer))
                d.Volumes[new VolKey(Side.Dst, layer)] = new SimVol { Legal = false, Content = 0 };
    }

    /// <summary>SimStorageDomain.CopyVolumeDataAsync: a LEGAL twin returns at once; an ILLEGAL source is never copied.</summary>
    private void CopyVolume(SimDisk d, string layer)
    {
        var twin = d.Get(Side.Dst, layer) ?? throw new HostError(d.LayersOn(Side.Dst).Count == 0 ? ErrorCodes.ImageNotFound : ErrorCodes.VolumeNotFound, $"no twin of {layer}");
        if (twin.Legal) return;
        var source = d.Get(Side.Src, layer) ?? throw new HostError(d.LayersOn(Side.Src).Count == 0 ? ErrorCodes.ImageNotFound : ErrorCodes.VolumeNotFound, $"source {layer} gone");
        if (!source.Legal) throw new HostError(ErrorCodes.Conflict, $"source {layer} is ILLEGAL");
        twin.Content = source.Content;
        twin.Legal = true;
    }

    /// <summary>StoragePool.ResolveChainAsync from the destination leaf (pre-copy).</summary>
    private List<VolKey> ResolveDestinationChain(SimDisk d)
    {
        RequireImage(d, Side.Dst);
        var chain = d.OriginalLayers.Select(l => new VolKey(Side.Dst, l)).ToList();
        foreach (var k in chain)
            if (!d.Volumes.ContainsKey(k)) throw new HostError(ErrorCodes.VolumeNotFound, $"{k} missing");
        return chain;
    }

    /// <summary>SimStorageDomain.DeleteImageAsync: every volume of the image on that domain, LEGAL or not, whoever has it open.</summary>
    private void DeleteImage(SimDisk d, Side side, MigrationStep step)
    {
        // Invariant 5 in the storage port: a volume a running QEMU has open (its chain, or a mirror's target) is locked
        // and not deleted (VOLUME_IN_USE, transient). A dead QEMU holds no lock.
        var doomed = d.Volumes.Keys.Where(k => k.Side == side).ToList();
        if (VmRunning && doomed.FirstOrDefault(k => d.Open.Contains(k) || d.MirrorRunning && k == new VolKey(Side.Dst, SimDisk.Leaf)) is { Layer: not null } open)
            throw new HostError(ErrorCodes.VolumeInUse, $"{open} is open in QEMU; not deleted while in use");
        foreach (var key in doomed)
        {
            if (d.Open.Contains(key))
                Violate("delete-open-chain", $"{step} of disk {d.Image} deleted {key}, which the drive has open ({(VmRunning ? "VM running" : "VM stopped; its record names this chain")})");
            d.Volumes.Remove(key);
        }
    }

    // ---- invariants on the world -------------------------------------------------------------------

    /// <summary>Every layer's newest data exists on some volume (a "lost write" otherwise).</summary>
    public void CheckNoLostData()
    {
        foreach (var d in Disks.Values)
            foreach (var (layer, version) in d.Written)
            {
                if (version == 0) continue;
                var best = d.Volumes.Where(v => v.Key.Layer == layer).Select(v => v.Value.Content).DefaultIfEmpty(-1).Max();
                if (best < version)
                    Violate("lost-write", $"disk {d.Image}: version {version} of layer {layer} exists nowhere (best copy {best})");
            }
    }
}
