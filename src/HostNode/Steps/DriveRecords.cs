using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Steps;

/// <summary>
/// The host's durable VM record as the switching steps keep it (DESIGN §7.1): the intent of a switch before it is
/// asked of QEMU, the leaf after it, and the reconciliation with what QEMU has open. Without a catalog (a host with no
/// management, <c>DiskMover</c>'s single host) there is no record to keep, and each method does nothing.
/// </summary>
public sealed class DriveRecords(IHypervisor hypervisor, StoragePool pool, VmCatalog? catalog)
{
    public VmCatalog? Catalog => catalog;

    /// <summary>The switch begun on the drive and not settled yet, or null (also without a catalog).</summary>
    public DiskLeaf? PendingOf(VmId vm, ImageId image) => catalog?.Find(vm)?.PendingOf(image);

    /// <summary>The intent, written before a switch is asked of QEMU: a host or QEMU that dies mid-switch leaves a record that says so.</summary>
    public async Task BeginSwitchAsync(VmId vm, ImageId image, VolumeRef target, CancellationToken ct = default)
    {
        if (catalog is null) return;
        // A QEMU already gone is never asked to switch: its record must not show a switch begun (a probe would then
        // have to guess). Throws VM_NOT_RUNNING before the intent is written.
        if (!(await hypervisor.DescribeVmAsync(vm, ct)).Running)
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {vm} is not running: no switch of drive {image} was begun");
        var absent = catalog.Find(vm) is null ? await RecordOfRunningAsync(vm, ct) : null;
        catalog.Update(vm, () => absent!, record => record.WithPending(image, target));
    }

    /// <summary>The drive runs on <paramref name="leaf"/>: recorded (fsync) before the step answers success.</summary>
    public async Task RecordLeafAsync(VmId vm, ImageId image, VolumeRef leaf, CancellationToken ct = default)
    {
        if (catalog is null) return;
        var absent = catalog.Find(vm) is null ? await RecordOfRunningAsync(vm, ct) : null;
        catalog.Update(vm, () => absent!, record => record.WithLeaf(image, leaf));
    }

    /// <summary>
    /// Written (fsync) before a probe answers that the drive's switch of <paramref name="migration"/> did not take effect:
    /// the saga then rolls back and deletes the copy, so a late copy of that switch (a resend crossing its answer, an
    /// HSM that restarted and forgot answering) must never land afterwards, even at a host that restarts meanwhile.
    /// </summary>
    public void FenceSwitch(VmId vm, ImageId image, MigrationId migration) => catalog?.Fence(vm, image, migration);

    /// <summary>Refuses a switch that a probe of its migration answered did not take effect (<see cref="FenceSwitchAsync"/>).</summary>
    public void RequireNotFenced(VmId vm, ImageId image, MigrationId migration)
    {
        if (catalog?.IsFenced(vm, image, migration) == true)
            throw new OperationFailedException(ErrorCodes.MigrationEnded,
                $"a probe answered that migration {migration}'s switch of VM {vm} drive {image} did not take effect, and the migration rolled " +
                "back from that answer: this late switch changes nothing");
    }

    public void ClearSwitch(VmId vm, ImageId image)
    {
        if (catalog?.Find(vm) is null) return;
        catalog.Update(vm, () => throw new InvalidOperationException("unreachable"), record => record.WithoutPending(image));
    }

    /// <summary>
    /// Runs a switch whose intent is written. When QEMU refuses it (no mirror to pivot, a parent that does not fit) and
    /// still runs with no block job on the drive, nothing can land any more: the intent is settled from what QEMU runs
    /// at once, rather than left for a probe that never comes when the command was a stale copy (simulation H1b).
    /// With QEMU gone, or a job still converging, the intent stays for the saga's probe.
    /// </summary>
    public async Task<DriveState> SettlingOnFailureAsync(VmId vm, ImageId image, Func<Task<DriveState>> switching, CancellationToken ct = default)
    {
        try
        {
            return await switching();
        }
        catch (OperationFailedException e) when (e.Code is not (ErrorCodes.VmNotRunning or ErrorCodes.VmNotFound or ErrorCodes.Timeout))
        {
            try
            {
                var info = await hypervisor.DescribeVmAsync(vm, ct);
                if (info.Running && info.Drive(image).Job is null)
                {
                    var open = (await VmReports.CurrentLeavesAsync(info, pool, ct)).FirstOrDefault(d => d.Image == image)?.Leaf;
                    // QEMU's open chain is the truth for a running drive (DESIGN §7.1): the record names it, nothing is pending.
                    if (open is { } leaf) await RecordLeafAsync(vm, image, leaf, ct);
                    else ClearSwitch(vm, image);
                }
            }
            catch (OperationFailedException)
            {
                // QEMU cannot be read now: the intent stays, and a probe decides.
            }
            throw;
        }
    }

    /// <summary>
    /// Brings a running VM's record in line with what QEMU has open (on adoption, and after a mirror ended on its own,
    /// e.g. a pivot that landed after its step had answered): returns what disagreed. A drive on its recorded leaf with
    /// a switch begun is left for the saga's probe.
    /// </summary>
    public async Task<IReadOnlyList<RecordDisagreement>> ReconcileAsync(VmInfo vm, CancellationToken ct = default)
    {
        if (catalog is null) return [];
        IReadOnlyList<DiskLeaf> open;
        try
        {
            open = await VmReports.CurrentLeavesAsync(vm, pool, ct);
        }
        catch (OperationFailedException e)
        {
            return [new($"VM {vm.Id}: {e.Message}; its record is left as it is", SwitchLanded: false)];
        }
        // Read and written under the catalog's lock: a switch of another drive recorded meanwhile is not written over.
        var disagreements = new List<RecordDisagreement>();
        catalog.Update(vm.Id, () => new CatalogedVm(vm.Id, vm.Name, open), record =>
        {
            disagreements.Clear();
            var updated = record;
            foreach (var drive in open)
            {
                var recorded = record.LeafOf(drive.Image)?.Leaf;
                var pending = record.PendingOf(drive.Image)?.Leaf;
                if (recorded == drive.Leaf && pending is null) continue;
                if (pending == drive.Leaf)
                    disagreements.Add(new($"VM {vm.Id} drive {drive.Image}: a switch to {pending} was begun and QEMU runs on it; recorded", SwitchLanded: true));
                else if (recorded != drive.Leaf)
                    disagreements.Add(new($"VM {vm.Id} drive {drive.Image}: the record names {recorded?.ToString() ?? "nothing"} but QEMU has {drive.Leaf} open; recording what QEMU runs", SwitchLanded: false));
                else
                    continue;
                updated = updated.WithLeaf(drive.Image, drive.Leaf);
            }
            return updated;
        });
        return disagreements;
    }

    /// <summary>The record of a VM this host runs but does not hold yet (adopted, or started outside the management API).</summary>
    private async Task<CatalogedVm> RecordOfRunningAsync(VmId vm, CancellationToken ct)
    {
        var info = await hypervisor.DescribeVmAsync(vm, ct);
        return new CatalogedVm(vm, info.Name, await VmReports.CurrentLeavesAsync(info, pool, ct));
    }
}

/// <summary>
/// A difference between a VM's record and what QEMU has open, said when the record was brought in line.
/// <paramref name="SwitchLanded"/>: QEMU runs on the leaf a begun switch named (the record only had not caught up yet), which
/// is what a mirror's end in the middle of a pivot looks like; anything else means the record had fallen behind QEMU.
/// </summary>
public sealed record RecordDisagreement(string Text, bool SwitchLanded)
{
    public override string ToString() => Text;
}
