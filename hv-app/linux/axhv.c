// SPDX-License-Identifier: GPL-2.0
/*
 * axhv: the Linux side of the axhv hypervisor's Type-1.5 mode.
 *
 * - takes the hypervisor's memory from a region Linux reserved at boot
 *   (memmap=SIZE$ADDR on the kernel command line, given again to this
 *   module as hv_mem=ADDR hv_size=SIZE) after checking that the region is
 *   not System RAM and is marked reserved in the iomem map;
 * - provides /dev/axhv (a misc device) with the ioctls of axhv_ioctl.h:
 *   status, load the hypervisor image into the region, enable, disable and
 *   the VM commands of hvctl;
 * - enables the hypervisor by calling the image's Linux entry on every
 *   online CPU at once (stop_machine: interrupts off on every CPU); all CPUs
 *   enter before any returns, and a failure on one CPU rolls every CPU that
 *   entered back to native. The entry is only called if the image carries a
 *   valid Linux-entry header (struct axhv_linux_header, ENDBR64 at the
 *   entry); an image without one is refused with -EOPNOTSUPP.
 *
 * Only interfaces exported by Linux 6.1 are used.
 */
#define pr_fmt(fmt) "axhv: " fmt

#include <linux/atomic.h>
#include <linux/cpu.h>
#include <linux/gfp.h>
#include <linux/uaccess.h>
#include <linux/capability.h>
#include <linux/cpumask.h>
#include <linux/fs.h>
#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/stop_machine.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/smp.h>
#include <asm/asm.h>
#include <asm/msr.h>
#include <asm/processor.h>
#include <asm/tsc.h>
#include <asm/extable_fixup_types.h>
#include <asm/pgtable.h>
#include <asm/tlbflush.h>

#include "axhv_ioctl.h"

static unsigned long hv_mem;
module_param(hv_mem, ulong, 0444);
MODULE_PARM_DESC(hv_mem, "physical base of the hypervisor region (memmap=SIZE$ADDR: ADDR)");

static unsigned long hv_size;
module_param(hv_size, ulong, 0444);
MODULE_PARM_DESC(hv_size, "size of the hypervisor region in bytes (memmap=SIZE$ADDR: SIZE)");

static DEFINE_MUTEX(axhv_lock);
static struct resource *axhv_res;	/* our claim on the region */
static void *axhv_region;		/* the region, mapped write-back */
static u64 axhv_image_size;		/* bytes loaded, 0: none */
static bool axhv_enabled;

/* The Linux entry, as found in the loaded image. */
struct axhv_entry_info {
	u64 header_offset;
	u64 entry_offset;
	u64 leave_offset;
};

typedef int (*axhv_entry_fn)(unsigned int cpu, u64 region_phys, u64 region_size);
typedef void (*axhv_leave_fn)(unsigned int cpu);

/* The region's mapping once made executable at enable (axhv_map_exec). */
static void *axhv_exec;
static struct axhv_entry_info axhv_entry;

static const u8 endbr64[4] = { 0xf3, 0x0f, 0x1e, 0xfa };

/* ---- verifying the region ---- */

static int axhv_count_reserved(struct resource *res, void *arg)
{
	u64 *covered = arg;

	*covered += resource_size(res);
	return 0;
}

static int axhv_check_region(void)
{
	u64 end, covered = 0;
	int ret;

	if (!hv_size) {
		pr_err("hv_mem= and hv_size= are required: pass the region reserved with memmap=SIZE$ADDR on the kernel command line (e.g. hv_mem=0x20000000 hv_size=0x10000000)\n");
		return -EINVAL;
	}
	if (!PAGE_ALIGNED(hv_mem) || !PAGE_ALIGNED(hv_size) ||
	    check_add_overflow((u64)hv_mem, (u64)hv_size, &end)) {
		pr_err("region %#lx+%#lx is not page aligned or wraps around\n",
		       hv_mem, hv_size);
		return -EINVAL;
	}
	if (hv_size < (2UL << 20)) {
		pr_err("region of %lu bytes is too small (at least 2 MiB)\n", hv_size);
		return -EINVAL;
	}
	ret = region_intersects(hv_mem, hv_size, IORESOURCE_SYSTEM_RAM, IORES_DESC_NONE);
	if (ret != REGION_DISJOINT) {
		pr_err("refusing region %#lx-%#llx: it is (partly) System RAM; reserve it at boot with memmap=%luM$%#lx\n",
		       hv_mem, end - 1, hv_size >> 20, hv_mem);
		return -EINVAL;
	}
	ret = walk_iomem_res_desc(IORES_DESC_RESERVED, IORESOURCE_MEM, hv_mem,
				  end - 1, &covered, axhv_count_reserved);
	if (covered != hv_size) {
		pr_err("refusing region %#lx-%#llx: only %llu of %lu bytes are marked reserved in the iomem map (/proc/iomem); reserve it at boot with memmap=%luM$%#lx\n",
		       hv_mem, end - 1, covered, hv_size, hv_size >> 20, hv_mem);
		return -EINVAL;
	}
	return 0;
}

/* ---- the Linux-entry header ---- */

/* Finds and checks the Linux-entry header of the loaded image. */
static int axhv_find_entry(struct axhv_entry_info *info)
{
	u64 scan = min_t(u64, axhv_image_size, AXHV_LINUX_HEADER_SCAN);
	const u8 *img = axhv_region;
	const struct axhv_linux_header *h = NULL;
	u64 off;

	for (off = 0; off + sizeof(*h) <= scan; off += 16) {
		if (!memcmp(img + off, AXHV_LINUX_MAGIC, 8)) {
			h = (const void *)(img + off);
			break;
		}
	}
	if (!h)
		return -EOPNOTSUPP;
	if (h->version != AXHV_LINUX_HEADER_VERSION || h->header_size != sizeof(*h)) {
		pr_err("image's Linux-entry header at %#llx has version %u size %u (want %u, %zu)\n",
		       off, h->version, h->header_size, AXHV_LINUX_HEADER_VERSION, sizeof(*h));
		return -ENOEXEC;
	}
	if (h->image_size > hv_size || h->image_size < axhv_image_size ||
	    h->entry_offset > h->image_size - 4 || h->leave_offset > h->image_size - 4) {
		pr_err("image's Linux-entry header has entries outside the image (entry %#llx, leave %#llx, size %#llx)\n",
		       h->entry_offset, h->leave_offset, h->image_size);
		return -ENOEXEC;
	}
	if (memcmp(img + h->entry_offset, endbr64, 4) || memcmp(img + h->leave_offset, endbr64, 4)) {
		pr_err("image's Linux entries do not start with ENDBR64\n");
		return -ENOEXEC;
	}
	info->header_offset = off;
	info->entry_offset = h->entry_offset;
	info->leave_offset = h->leave_offset;
	return 0;
}

static void axhv_flush_tlb(void *unused)
{
	__flush_tlb_all();
}

/*
 * Makes the region's mapping executable. memremap()/ioremap() give NX
 * mappings, and 6.1 exports neither set_memory_x() nor the vmalloc-range
 * helpers; vmap() would need struct pages, which a memmap=-reserved region
 * does not have. So the NX bit is cleared in the mapping's own page-table
 * entries, found with lookup_address() (exported), and every CPU's TLB is
 * flushed (__flush_tlb_all() on each CPU).
 */
static void *axhv_map_exec(void)
{
	unsigned long va = (unsigned long)axhv_region, end = va + hv_size;

	while (va < end) {
		unsigned int level;
		pte_t *pte = lookup_address(va, &level);

		if (!pte || !pte_present(*pte)) {
			pr_err("region mapping has no entry for %#lx\n", va);
			return NULL;
		}
		/* The NX bit is bit 63 at every level (PTE, 2 MiB PMD, 1 GiB PUD). */
		set_pte(pte, pte_mkexec(*pte));
		va = (va & page_level_mask(level)) + page_level_size(level);
	}
	on_each_cpu(axhv_flush_tlb, NULL, 1);
	return axhv_region;
}

static void axhv_destroy_all(void);

/* ---- the all-CPU rendezvous ---- */

struct axhv_rendezvous {
	axhv_entry_fn entry;
	axhv_leave_fn leave;
	atomic_t arrived;	/* CPUs done with their entry call */
	atomic_t failed;	/* CPUs whose entry call failed */
	atomic_t rolled_back;	/* CPUs that entered and left again */
	int first_error;
};

/*
 * Runs on every online CPU at once from stop_machine(), interrupts off.
 * Every CPU calls the entry, then waits until all CPUs have; if any failed,
 * every CPU that entered leaves again, so the CPUs end up all in the
 * hypervisor or all native.
 */
static int axhv_enter_cpu(void *data)
{
	struct axhv_rendezvous *rv = data;
	unsigned int cpu = smp_processor_id();
	unsigned int n = num_online_cpus();
	int ret;

	ret = rv->entry(cpu, hv_mem, hv_size);
	if (ret) {
		cmpxchg(&rv->first_error, 0, ret);
		atomic_inc(&rv->failed);
	}
	atomic_inc(&rv->arrived);
	while ((unsigned int)atomic_read(&rv->arrived) < n)
		cpu_relax();
	if (atomic_read(&rv->failed) && !ret) {
		rv->leave(cpu);	/* roll back: another CPU failed */
		atomic_inc(&rv->rolled_back);
	}
	return ret;
}

static int axhv_leave_cpu(void *data)
{
	struct axhv_rendezvous *rv = data;

	rv->leave(smp_processor_id());
	return 0;
}

static int axhv_enable(void)
{
	struct axhv_rendezvous rv = {
		.arrived = ATOMIC_INIT(0),
		.failed = ATOMIC_INIT(0),
		.rolled_back = ATOMIC_INIT(0),
	};
	int ret;

	if (axhv_enabled)
		return -EBUSY;
	if (!axhv_image_size) {
		pr_err("enable: no hypervisor image loaded\n");
		return -ENOEXEC;
	}
	ret = axhv_find_entry(&axhv_entry);
	if (ret == -EOPNOTSUPP) {
		pr_err("image has no Linux entry (Type-1.5 entry not implemented in hv-app yet)\n");
		return ret;
	}
	if (ret)
		return ret;
	if (!axhv_exec)
		axhv_exec = axhv_map_exec();
	if (!axhv_exec)
		return -ENOMEM;
	/* Boot parameter after the header: Linux's TSC frequency. */
	*(u64 *)(axhv_region + axhv_entry.header_offset + sizeof(struct axhv_linux_header)) = tsc_khz;
	rv.entry = (axhv_entry_fn)(axhv_exec + axhv_entry.entry_offset);
	rv.leave = (axhv_leave_fn)(axhv_exec + axhv_entry.leave_offset);
	pr_info("entering the hypervisor on %u CPUs\n", num_online_cpus());
	ret = stop_machine(axhv_enter_cpu, &rv, cpu_online_mask);
	if (ret) {
		pr_err("enable failed on %d CPU(s) (first error %d); the %d CPU(s) that entered were rolled back: every CPU is native\n",
		       atomic_read(&rv.failed), rv.first_error, atomic_read(&rv.rolled_back));
		return ret;
	}
	axhv_enabled = true;
	pr_info("hypervisor enabled on %u CPUs: Linux runs as the root VM\n", num_online_cpus());
	return 0;
}

static int axhv_disable(void)
{
	struct axhv_rendezvous rv = { 0 };

	if (!axhv_enabled)
		return -ENODEV;
	axhv_destroy_all();
	rv.leave = (axhv_leave_fn)(axhv_exec + axhv_entry.leave_offset);
	stop_machine(axhv_leave_cpu, &rv, cpu_online_mask);
	axhv_enabled = false;
	pr_info("hypervisor disabled: Linux runs natively\n");
	return 0;
}

/* ---- guest VMs: hypercalls, CPUs given up by Linux ---- */

#define AXHV_MAX_VMS 16
#define AXHV_MAX_VM_IMAGE (4UL << 20)	/* one physically contiguous buffer */
#define AXHV_MAX_VM_CONFIG (64UL << 10)

/* The CPU each VM holds (-1: none), by VM id. */
static int axhv_vm_cpu[AXHV_MAX_VMS + 1];
static bool axhv_vm_used[AXHV_MAX_VMS + 1];

static long axhv_hypercall(unsigned long nr, unsigned long a0, unsigned long a1,
			   unsigned long a2, unsigned long a3)
{
	register unsigned long r10 asm("r10") = a3;
	long ret;

	if (boot_cpu_data.x86_vendor == X86_VENDOR_INTEL)
		asm volatile("vmcall" : "=a"(ret)
			     : "a"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10) : "memory");
	else
		asm volatile("vmmcall" : "=a"(ret)
			     : "a"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10) : "memory");
	return ret;
}

static void axhv_offer_fn(void *data)
{
	*(long *)data = axhv_hypercall(AXHV_HC_CPU_OFFER, 0, 0, 0, 0);
}

static void axhv_rejoin_fn(void *data)
{
	axhv_entry_fn entry = (axhv_entry_fn)(axhv_exec + axhv_entry.entry_offset);

	*(int *)data = entry(smp_processor_id(), hv_mem, hv_size);
}

/* CPU `cpu` came back from a guest VM (the hypervisor left it ready for
 * INIT/SIPI): online it and enter the hypervisor on it again. */
static int axhv_cpu_return(int cpu)
{
	int ret = add_cpu(cpu);
	int entered = -EIO;

	if (ret) {
		pr_err("CPU %d: add_cpu failed (%d); it stays offline\n", cpu, ret);
		return ret;
	}
	ret = smp_call_function_single(cpu, axhv_rejoin_fn, &entered, 1);
	if (ret || entered) {
		pr_err("CPU %d is online again but could not enter the hypervisor (%d/%d)\n",
		       cpu, ret, entered);
		return ret ? ret : entered;
	}
	pr_info("CPU %d back online, under the hypervisor again\n", cpu);
	return 0;
}

/* The CPU a new VM gets: the highest online CPU but the boot CPU. */
static int axhv_pick_cpu(void)
{
	int cpu = cpumask_last(cpu_online_mask);

	if (num_online_cpus() < 2 || cpu <= 0 || cpu >= nr_cpu_ids)
		return -EBUSY;
	return cpu;
}

static long axhv_vm_create(void __user *uarg)
{
	struct axhv_vm_create a;
	void *cfg = NULL, *img = NULL;
	size_t cfg_size, img_size;
	long id, ret, offered = -EIO;
	int cpu;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (!axhv_enabled)
		return -ENODEV;
	if (!a.config.len || !a.image.len)
		return -EINVAL;
	if (a.config.len > AXHV_MAX_VM_CONFIG || a.image.len > AXHV_MAX_VM_IMAGE) {
		pr_err("vm create: config %llu bytes (max %lu), image %llu bytes (max %lu)\n",
		       a.config.len, AXHV_MAX_VM_CONFIG, a.image.len, AXHV_MAX_VM_IMAGE);
		return -E2BIG;
	}
	cpu = axhv_pick_cpu();
	if (cpu < 0) {
		pr_err("vm create: no CPU to give the VM (Linux keeps its boot CPU; %u online)\n",
		       num_online_cpus());
		return cpu;
	}
	cfg_size = PAGE_ALIGN(a.config.len);
	img_size = PAGE_ALIGN(a.image.len);
	cfg = alloc_pages_exact(cfg_size, GFP_KERNEL);
	img = alloc_pages_exact(img_size, GFP_KERNEL);
	ret = -ENOMEM;
	if (!cfg || !img)
		goto out;
	ret = -EFAULT;
	if (copy_from_user(cfg, u64_to_user_ptr(a.config.ptr), a.config.len) ||
	    copy_from_user(img, u64_to_user_ptr(a.image.ptr), a.image.len))
		goto out;
	id = axhv_hypercall(AXHV_HC_VM_CREATE, __pa(cfg), a.config.len, __pa(img), a.image.len);
	if (id < 0) {
		pr_err("vm create: the hypervisor refused the VM (%ld; see its console)\n", id);
		ret = id;
		goto out;
	}
	if (id > AXHV_MAX_VMS) {
		axhv_hypercall(AXHV_HC_VM_DESTROY, id, 0, 0, 0);
		ret = -ENOSPC;
		goto out;
	}
	/* Give the VM a CPU: offer it, then offline it. */
	ret = smp_call_function_single(cpu, axhv_offer_fn, &offered, 1);
	if (ret || offered) {
		pr_err("vm create: CPU %d could not be offered (%ld/%ld)\n", cpu, ret, offered);
		axhv_hypercall(AXHV_HC_VM_DESTROY, id, 0, 0, 0);
		ret = ret ? ret : offered;
		goto out;
	}
	ret = remove_cpu(cpu);
	if (ret) {
		pr_err("vm create: offlining CPU %d failed (%ld)\n", cpu, ret);
		axhv_hypercall(AXHV_HC_VM_DESTROY, id, 0, 0, 0);
		goto out;
	}
	ret = axhv_hypercall(AXHV_HC_VM_START, id, cpu, 0, 0);
	if (ret) {
		pr_err("vm create: starting VM %ld on CPU %d failed (%ld)\n", id, cpu, ret);
		axhv_hypercall(AXHV_HC_VM_DESTROY, id, 0, 0, 0);
		if (!axhv_hypercall(AXHV_HC_CPU_RELEASE, cpu, 0, 0, 0))
			axhv_cpu_return(cpu);
		goto out;
	}
	axhv_vm_used[id] = true;
	axhv_vm_cpu[id] = cpu;
	pr_info("VM %ld created and started on CPU %d (offlined for it)\n", id, cpu);
	a.id = id;
	ret = copy_to_user(uarg, &a, sizeof(a)) ? -EFAULT : 0;
out:
	if (cfg)
		free_pages_exact(cfg, cfg_size);
	if (img)
		free_pages_exact(img, img_size);
	return ret;
}

static long axhv_vm_destroy_id(u32 id)
{
	long ret = axhv_hypercall(AXHV_HC_VM_DESTROY, id, 0, 0, 0);

	if (ret < 0)
		return ret;
	if (id <= AXHV_MAX_VMS)
		axhv_vm_used[id] = false;
	pr_info("VM %u destroyed\n", id);
	if (ret != AXHV_NO_CPU)
		return axhv_cpu_return((int)ret);
	return 0;
}

static long axhv_vm_destroy(void __user *uarg)
{
	u32 id;

	if (copy_from_user(&id, uarg, sizeof(id)))
		return -EFAULT;
	if (!axhv_enabled)
		return -ENODEV;
	return axhv_vm_destroy_id(id);
}

/* Destroys every VM this module started (before disable). */
static void axhv_destroy_all(void)
{
	u32 id;

	for (id = 1; id <= AXHV_MAX_VMS; id++)
		if (axhv_vm_used[id])
			axhv_vm_destroy_id(id);
}

/*
 * A hypercall that moves bytes between the hypervisor and a user buffer
 * through a kernel bounce buffer of `len` bytes (at most `max`): `in`
 * copies the user bytes to the hypervisor (`nr`(id, pa, len)), otherwise
 * the hypervisor's first `out_unit` * result bytes go back to the user
 * (`nr`(pa, len) for id 0, `nr`(id, pa, len) otherwise).
 */
static long axhv_hc_buffer(unsigned long nr, u32 id, struct axhv_buf b, u64 min, u64 max,
			   bool in, u64 out_unit)
{
	void *buf;
	long n;

	if (!axhv_enabled)
		return -ENODEV;
	if (b.len < min || b.len > max)
		return -EINVAL;
	buf = kzalloc(b.len, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	if (in && copy_from_user(buf, u64_to_user_ptr(b.ptr), b.len)) {
		kfree(buf);
		return -EFAULT;
	}
	if (id)
		n = axhv_hypercall(nr, id, __pa(buf), b.len, 0);
	else
		n = axhv_hypercall(nr, __pa(buf), b.len, 0, 0);
	if (!in && n > 0 &&
	    copy_to_user(u64_to_user_ptr(b.ptr), buf, min_t(u64, b.len, n * out_unit)))
		n = -EFAULT;
	kfree(buf);
	return n;
}

static long axhv_vm_list(void __user *uarg)
{
	struct axhv_buf b;

	if (copy_from_user(&b, uarg, sizeof(b)))
		return -EFAULT;
	return axhv_hc_buffer(AXHV_HC_VM_LIST, 0, b, 16, 1UL << 20, false, 16);
}

static long axhv_vm_console(void __user *uarg)
{
	struct axhv_vm_console c;

	if (copy_from_user(&c, uarg, sizeof(c)))
		return -EFAULT;
	return axhv_hc_buffer(AXHV_HC_VM_CONSOLE_READ, c.id, c.buf, 1, 1UL << 20, false, 1);
}

/* Queues bytes as a VM's console input; returns how many were taken. */
static long axhv_vm_input(void __user *uarg)
{
	struct axhv_vm_console c;

	if (copy_from_user(&c, uarg, sizeof(c)))
		return -EFAULT;
	return axhv_hc_buffer(AXHV_HC_VM_CONSOLE_WRITE, c.id, c.buf, 1, 4096, true, 0);
}

/* Reads a word with an exception-table fixup: a fault (#GP, #PF) makes it
 * return -EFAULT instead of an oops. */
static long axhv_probe_read(const void *addr, u64 *val)
{
	long err = 0;
	u64 v = 0;

	asm volatile("1: movq (%[addr]), %[v]\n"
		     "2:\n"
		     _ASM_EXTABLE_TYPE_REG(1b, 2b, EX_TYPE_EFAULT_REG, %[err])
		     : [v] "+r"(v), [err] "+r"(err)
		     : [addr] "r"(addr)
		     : "memory");
	*val = v;
	return err;
}

/* Malformed hypercalls and a read of the hypervisor's memory by the root
 * VM: each must come back as an error code, the hypervisor and Linux going
 * on. Also what the root VM reads of the CPU's own virtualization feature,
 * which the hypervisor hides: EFER.SVME and CPUID 8000_0001h ECX.SVM on
 * AMD, CPUID 1 ECX.VMX on Intel (its EFER has no SVME bit). */
static long axhv_selftest(void __user *uarg)
{
	struct axhv_selftest t = { 0 };
	bool intel = boot_cpu_data.x86_vendor == X86_VENDOR_INTEL;
	u64 word;

	if (!axhv_enabled)
		return -ENODEV;
	t.vendor = intel ? AXHV_VENDOR_INTEL : AXHV_VENDOR_AMD;
	t.bad_buffer = axhv_hypercall(AXHV_HC_VM_CREATE, hv_mem, 64, hv_mem + 4096, 4096);
	t.unknown_nr = axhv_hypercall(0x7777, 0, 0, 0, 0);
	t.bad_vm_id = axhv_hypercall(AXHV_HC_VM_START, 0, 1, 0, 0);
	pr_info("selftest: reading the hypervisor's region at %#lx from the root VM\n", hv_mem + 0x1000);
	t.hv_read = axhv_probe_read(axhv_region + 0x1000, &word);
	rdmsrl(MSR_EFER, word);
	t.efer_svme = (word >> 12) & 1;
	t.cpuid_svm = (cpuid_ecx(0x80000001) >> 2) & 1;
	t.cpuid_vmx = (cpuid_ecx(1) >> 5) & 1;
	if (intel)
		pr_info("selftest: hypercall results %lld %lld %lld, read %lld, CPUID VMX %lld\n",
			t.bad_buffer, t.unknown_nr, t.bad_vm_id, t.hv_read, t.cpuid_vmx);
	else
		pr_info("selftest: hypercall results %lld %lld %lld, read %lld, EFER.SVME %lld, CPUID SVM %lld\n",
			t.bad_buffer, t.unknown_nr, t.bad_vm_id, t.hv_read, t.efer_svme, t.cpuid_svm);
	return copy_to_user(uarg, &t, sizeof(t)) ? -EFAULT : 0;
}

/* ---- ioctls ---- */

static long axhv_load_image(void __user *uarg)
{
	struct axhv_buf b;
	struct axhv_entry_info info;

	if (copy_from_user(&b, uarg, sizeof(b)))
		return -EFAULT;
	if (axhv_enabled)
		return -EBUSY;
	if (!b.len)
		return -EINVAL;
	if (b.len > hv_size) {
		pr_err("image of %llu bytes does not fit in the %lu-byte region\n", b.len, hv_size);
		return -ENOSPC;
	}
	if (copy_from_user(axhv_region, u64_to_user_ptr(b.ptr), b.len))
		return -EFAULT;
	axhv_image_size = b.len;
	pr_info("loaded the hypervisor image (%llu bytes) at %#lx; Linux entry: %s\n",
		b.len, hv_mem, axhv_find_entry(&info) ? "none" : "present");
	return 0;
}

static long axhv_status(void __user *uarg)
{
	struct axhv_status s = {
		.abi = AXHV_MODULE_ABI,
		.flags = AXHV_STATUS_REGION_OK,
		.region_base = hv_mem,
		.region_size = hv_size,
		.image_size = axhv_image_size,
		.online_cpus = num_online_cpus(),
	};
	struct axhv_entry_info info;

	if (axhv_image_size)
		s.flags |= AXHV_STATUS_IMAGE_LOADED;
	/*
	 * Once enabled, the region is the hypervisor's: the root VM's nested
	 * page table leaves it out, so Linux must not read it (it was
	 * entered, so the entry is there).
	 */
	if (axhv_enabled)
		s.flags |= AXHV_STATUS_ENABLED | AXHV_STATUS_IMAGE_LINUX_ENTRY;
	else if (axhv_image_size && !axhv_find_entry(&info))
		s.flags |= AXHV_STATUS_IMAGE_LINUX_ENTRY;
	return copy_to_user(uarg, &s, sizeof(s)) ? -EFAULT : 0;
}

static long axhv_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	long ret;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	mutex_lock(&axhv_lock);
	switch (cmd) {
	case AXHV_IOC_STATUS:
		ret = axhv_status(uarg);
		break;
	case AXHV_IOC_LOAD_IMAGE:
		ret = axhv_load_image(uarg);
		break;
	case AXHV_IOC_ENABLE:
		ret = axhv_enable();
		break;
	case AXHV_IOC_DISABLE:
		ret = axhv_disable();
		break;
	/* VM commands are hypercalls of the root VM: -ENODEV when disabled. */
	case AXHV_IOC_VM_CREATE:
		ret = axhv_vm_create(uarg);
		break;
	case AXHV_IOC_VM_DESTROY:
		ret = axhv_vm_destroy(uarg);
		break;
	case AXHV_IOC_VM_LIST:
		ret = axhv_vm_list(uarg);
		break;
	case AXHV_IOC_VM_CONSOLE:
		ret = axhv_vm_console(uarg);
		break;
	case AXHV_IOC_VM_INPUT:
		ret = axhv_vm_input(uarg);
		break;
	case AXHV_IOC_SELFTEST:
		ret = axhv_selftest(uarg);
		break;
	default:
		ret = -ENOTTY;
	}
	mutex_unlock(&axhv_lock);
	return ret;
}

static const struct file_operations axhv_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = axhv_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice axhv_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "axhv",
	.fops = &axhv_fops,
	.mode = 0600,
};

static int __init axhv_init(void)
{
	int ret = axhv_check_region();

	if (ret)
		return ret;
	axhv_res = request_mem_region(hv_mem, hv_size, "axhv hypervisor");
	if (!axhv_res) {
		pr_err("region %#lx+%#lx is already claimed by another driver\n", hv_mem, hv_size);
		return -EBUSY;
	}
	axhv_region = memremap(hv_mem, hv_size, MEMREMAP_WB);
	if (!axhv_region) {
		pr_err("cannot map region %#lx+%#lx\n", hv_mem, hv_size);
		ret = -ENOMEM;
		goto release;
	}
	ret = misc_register(&axhv_misc);
	if (ret)
		goto unmap;
	pr_info("region %#lx-%#lx (%lu MiB) verified: reserved, not System RAM; /dev/axhv ready\n",
		hv_mem, hv_mem + hv_size - 1, hv_size >> 20);
	return 0;
unmap:
	memunmap(axhv_region);
release:
	release_mem_region(hv_mem, hv_size);
	return ret;
}

static void __exit axhv_exit(void)
{
	mutex_lock(&axhv_lock);
	if (axhv_enabled)
		axhv_disable();
	mutex_unlock(&axhv_lock);
	misc_deregister(&axhv_misc);
	memunmap(axhv_region);
	release_mem_region(hv_mem, hv_size);
	pr_info("unloaded\n");
}

module_init(axhv_init);
module_exit(axhv_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("axhv hypervisor: Type-1.5 loader and /dev/axhv");
MODULE_AUTHOR("The axhv developers");
